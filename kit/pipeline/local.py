"""Local matching wired into both tasks: the re-ranking stage (kit.rerank) fed from the whole config.

kit.rerank reads only its own ``rerank`` section; what else it needs (the shortlist length, the cache folder, the
photos' paths, identities and flanks) is handed over here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..cache import cache_root
from ..cluster import LocalFn
from ..retrieve import topk_cosine


def refine(global_scores: np.ndarray, db: pd.DataFrame, q: pd.DataFrame, emb_db: np.ndarray, conf: dict
           ) -> dict[str, np.ndarray]:
    """Re-ranked and fused image scores for one dataset's queries (the 2025 task).

    ``global_scores: [Q, N] float32`` cosine of the queries ``q`` to the database ``db`` (frames with
    ``filepath``, ``identity``, ``orientation``), ``emb_db: [N, D] float32``; ``conf`` the whole config.
    Returns ``{"reranked": [Q, N] float32, "fused": [Q, N] float32}``:
      reranked: the shortlist ordered by the local score alone (what the founding study did), every photo
        outside the shortlist below every photo in it (-1); pairs left unmatched (opposite flanks) score 0;
      fused: calibrated P(same identity) for every pair, the global one outside the shortlist.
    """
    from .. import rerank

    rc = rerank.rerank_conf(conf["rerank"])
    fused, info = rerank.rerank_fuse(
        q["filepath"].tolist(), db["filepath"].tolist(), global_scores, db["identity"].to_numpy(), emb_db,
        int(conf["retrieve"]["topk"]), rc, cache_root(conf["cache"]),
        query_orientation=q["orientation"].tolist(), gallery_orientation=db["orientation"].tolist())
    index, local = info["index"], info["local"][rc["local_score"]]
    reranked = np.full(global_scores.shape, -1.0, np.float32)
    rows = np.broadcast_to(np.arange(len(index))[:, None], index.shape)
    ok = index >= 0
    reranked[rows[ok], index[ok]] = np.nan_to_num(local[ok], nan=0.0)
    return {"reranked": reranked, "fused": fused.astype(np.float32)}


def cluster_local_fn(conf: dict) -> LocalFn | None:
    """The 2026 clustering's local scores: a LocalFn matching each photo against its ``cluster.rerank_topk``
    nearest photos (by cosine) with the re-ranker's local features and matcher, returning the
    ``rerank.local_score`` of each matched pair (NaN elsewhere), symmetrised by the max of both directions.
    None when re-ranking is off or ``cluster.rerank_topk`` is 0. Weights resolve now (WeightsError if missing)."""
    k = int(conf["cluster"]["rerank_topk"])
    if not conf["rerank"].get("enabled") or k <= 0:
        return None
    from .. import rerank

    rc = rerank.rerank_conf(conf["rerank"])
    matcher = rerank.LocalMatcher(rc)
    cache_dir = cache_root(conf["cache"])
    chunk = int(conf["retrieve"]["chunk_size"])

    def local_fn(frame: pd.DataFrame, emb: np.ndarray) -> np.ndarray:
        m = len(frame)
        out = np.full((m, m), np.nan, np.float32)
        if m < 2:
            return out
        index = _nearest_others(emb, min(k, m - 1), chunk)  # [m, k]
        mask = index >= 0
        if rc["skip_opposite_flanks"] and "orientation" in frame.columns:
            o = frame["orientation"].to_numpy()
            mask &= rerank.orientation_pair_mask(o, o, index)
        # each unordered pair once: (i, j) with j < i is skipped when i is in j's shortlist too
        rows = np.repeat(np.arange(m), index.shape[1]).reshape(index.shape)
        listed = np.zeros((m, m), bool)
        listed[rows[index >= 0], index[index >= 0]] = True
        mask &= ~((index < rows) & listed[np.clip(index, 0, None), rows])
        paths = frame["filepath"].tolist()
        local = rerank.rerank_shortlist(paths, paths, index, rc, cache_dir, pair_mask=mask, matcher=matcher)
        score = local[rc["local_score"]] if rc["local_score"] in local else local["n_matches"]
        ok = mask & np.isfinite(score)
        out[rows[ok], index[ok]] = score[ok]
        return np.fmax(out, out.T)

    return local_fn


def _nearest_others(emb: np.ndarray, k: int, chunk_size: int) -> np.ndarray:
    """[M, k] int64: each photo's k nearest other photos by cosine (descending, ties to the lower index), from
    retrieve's bounded-memory top-K (k + 1 neighbours, the photo itself dropped)."""
    _, index = topk_cosine(emb, emb, k + 1, chunk_size=chunk_size)
    m = len(emb)
    keep = index != np.arange(m)[:, None]  # the photo itself, wherever ties placed it
    out = np.empty((m, k), np.int64)
    for r in range(m):
        out[r] = index[r][keep[r]][:k]
    return out
