"""Candidate pairs of one dataset, their features, and the pair models that turn them into P(same individual).

For each photo of the database (as a pseudo-query against the rest of the database) and each query, the
candidates are its global shortlist (``retrieve.topk`` photos by the mean cosine of the descriptors, at most
``rerank.per_identity`` per identity). A pair's features are its cosine and rank under each global descriptor, its
local match scores under each matcher (kit.rerank, cached per photo pair: the database x database pairs the open-set
calibration needs are matched once, not once per held-out split), and whether the two photos show the same or
opposite flanks. Matrices are ``[rows, K]``: row i's K candidates, ``index[i, k]`` a database row (-1 = empty).

Two feature sets, two pipelines: ``global`` (the descriptors alone) and ``fused`` (descriptors and matchers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..head import HEAD
from ..pairmodel import PairFit, fit_pair_model
from ..retrieve import dedup_shortlist
from ..schema import flank

GLOBAL, FUSED = "global", "fused"
NOHEAD = "-nohead"  # suffix of a pipeline that leaves the metric head's columns out (reported beside the submitted)


def combine(embs: dict[str, np.ndarray]) -> np.ndarray:
    """``[N, sum D] float32``: the descriptors side by side, each scaled by 1/sqrt(count), so that the dot product
    of two rows is the mean of their per-descriptor cosines (and still a cosine: rows stay unit length)."""
    scale = 1.0 / np.sqrt(len(embs))
    return np.concatenate([np.asarray(e, np.float32) * scale for e in embs.values()], 1)


def _ranks(sims: np.ndarray, index: np.ndarray) -> np.ndarray:
    """[R, K] float32: log1p of each candidate's 0-based rank in its row of ``sims [R, N]`` (descending, stable)."""
    order = np.argsort(-sims, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(sims.shape[1])[None, :].repeat(len(sims), 0), 1)
    return np.log1p(np.take_along_axis(rank, np.clip(index, 0, None), 1)).astype(np.float32)


@dataclass
class Candidates:
    """One side's candidate pairs: ``index [R, K] int64`` database rows (-1 = empty) and ``cols {name: [R, K]}``."""

    index: np.ndarray
    cols: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def valid(self) -> np.ndarray:
        return self.index >= 0

    def flat(self) -> dict[str, np.ndarray]:
        """Each column's valid entries, row-major: what the pair model reads."""
        ok = self.valid
        return {n: v[ok] for n, v in self.cols.items()}


def candidates(embs_q: dict[str, np.ndarray], embs_db: dict[str, np.ndarray], labels_db: np.ndarray, k: int,
               per_identity: int, exclude_self: bool, flank_q, flank_db, order_by: tuple[str, ...] = ()
               ) -> Candidates:
    """The shortlist of each row of ``embs_q`` in the database, with the global and flank columns filled.

    ``embs_*``: {descriptor: [R, D] / [N, D]} L2-normalised; ``exclude_self``: the rows ARE the database (pseudo-
    queries, or the test photos among themselves), so row i never lists itself. ``k``: shortlist length (N or more =
    every photo). ``order_by``: the descriptors whose mean cosine orders the shortlist (empty = all of them).
    """
    names = list(embs_db)
    sims = {d: embs_q[d] @ embs_db[d].T for d in names}  # [R, N] each
    by = [d for d in order_by if d in sims] or names
    mean = sum(sims[d] for d in by) / len(by)
    if exclude_self:
        for s in (mean, *sims.values()):
            np.fill_diagonal(s, -np.inf)
    n = mean.shape[1]
    index = dedup_shortlist(mean, labels_db, min(k, n), per_identity)
    out = Candidates(index)
    safe = np.clip(index, 0, None)
    for d in names:
        out.cols[f"cos:{d}"] = np.where(index >= 0, np.take_along_axis(sims[d], safe, 1), 0).astype(np.float32)
        out.cols[f"rank:{d}"] = _ranks(sims[d], index)
    fq, fd = np.asarray(flank_q), np.asarray(flank_db)[safe]
    known = (fq[:, None] > 0) & (fd > 0)
    out.cols["flank_same"] = (known & (fq[:, None] == fd)).astype(np.float32)
    out.cols["flank_opposite"] = (known & (fq[:, None] != fd)).astype(np.float32)
    return out


def add_local(cand: Candidates, name: str, scores: dict[str, np.ndarray], done: np.ndarray,
              labels_db: np.ndarray) -> None:
    """Put one matcher's scores into ``cand``: ``scores {column: [P]}`` (kit.rerank.score_pairs) for the
    ``done [R, K] bool`` entries (row-major), log1p-transformed (counts are heavy-tailed), and the identity-weighted
    score (``<name>:weighted``) from its match masks; the rest get 0 and ``<name>:missing`` = 1."""
    from ..rerank import identity_weighted

    for col, v in scores.items():
        if col == "mask":
            continue
        full = np.zeros(cand.index.shape, np.float32)
        full[done] = np.log1p(np.maximum(v, 0))
        cand.cols[f"{name}:{col}"] = full
    if "mask" in scores and scores["mask"].ndim == 2:
        masks = np.zeros((*cand.index.shape, scores["mask"].shape[1]), np.uint8)
        masks[done] = scores["mask"]
        labels = np.asarray(labels_db, dtype=object)[np.clip(cand.index, 0, None)]
        cand.cols[f"{name}:weighted"] = np.log1p(identity_weighted(masks, labels, done)).astype(np.float32)
    cand.cols[f"{name}:missing"] = (~done).astype(np.float32)


def feature_names(cols: dict[str, np.ndarray], pipeline: str) -> tuple[str, ...]:
    """The columns a pipeline's pair model reads: global ones only (``global``), or all (``fused``); a name ending
    in ``-nohead`` leaves out the metric head's columns (the same run without the head, for comparison)."""
    glob = ("cos:", "rank:", "flank_")
    base = pipeline.removesuffix(NOHEAD)
    names = tuple(n for n in cols if base == FUSED or n.startswith(glob))
    return tuple(n for n in names if not n.endswith(f":{HEAD}")) if pipeline.endswith(NOHEAD) else names


def mean_columns(names: tuple[str, ...]) -> tuple[str, str | None]:
    """The two columns the ``mean`` method averages: the first cosine and the first match count."""
    cos = next(n for n in names if n.startswith("cos:"))
    local = next((n for n in names if n.endswith(":n_matches")), None)
    return cos, local


@dataclass
class PairTable:
    """The labelled candidate pairs of one held-out split of one dataset: ``cand`` (rows = the split's pseudo-
    queries), ``q_labels [R]`` their identities and ``db_labels [N]`` those of the split's gallery. A pair model is
    fitted on such tables, and its out-of-fold P on them is what tau and the 2026 cut are chosen on."""

    cand: Candidates
    q_labels: np.ndarray
    db_labels: np.ndarray
    dataset: str

    def flat_labels(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(same [P] bool, query id [P], query identity [P], candidate identity [P]) of the valid pairs, row-major;
        ``key`` makes the query ids unique across tables."""
        ok = self.cand.valid
        rows = np.broadcast_to(np.arange(len(ok))[:, None], ok.shape)[ok]
        qi = np.asarray(self.q_labels, dtype=object)[rows]
        ci = np.asarray(self.db_labels, dtype=object)[self.cand.index[ok]]
        ds = self.dataset
        return (qi == ci, np.array([f"{key}/{r}" for r in rows], dtype=object),
                np.array([f"{ds}/{x}" for x in qi], dtype=object), np.array([f"{ds}/{x}" for x in ci], dtype=object))


def fit_models(tables: list[PairTable], pipeline: str, pc: dict) -> tuple[dict[str, PairFit], list[np.ndarray]]:
    """One pair model per dataset for ``pipeline``, fitted on all its tables (held-out splits); a dataset too small
    to fit its own (fewer than ``pairmodel.min_identities`` identities with a true candidate, or fewer than
    ``pairmodel.min_positive`` true pairs) gets the model pooled over all datasets, and says so.

    Cross-fitting is by identity on both sides of a pair (kit/pairmodel.py ``other``). Returns ({dataset: PairFit},
    [out-of-fold P of each table's valid pairs, row-major], in ``tables`` order).
    """
    labs = [t.flat_labels(str(i)) for i, t in enumerate(tables)]
    flat = [t.cand.flat() for t in tables]
    by_ds: dict[str, list[int]] = {}
    for i, t in enumerate(tables):
        by_ds.setdefault(t.dataset, []).append(i)

    def fit(idx: list[int]) -> PairFit:
        common = [n for n in flat[idx[0]] if all(n in flat[i] for i in idx)]  # pooled: the columns all datasets have
        cols = {n: np.concatenate([flat[i][n] for i in idx]) for n in common}
        names = feature_names(cols, pipeline)
        if pc["features"] not in ("auto", "all"):
            names = tuple(n for n in names if n.startswith(tuple(pc["features"]))) or names
        same, query, group, other = (np.concatenate([labs[i][c] for i in idx]) for c in range(4))
        return fit_pair_model(cols, names, same, query, group, pc["method"], pc["cv_folds"], pc["min_gain"],
                              pc["seed"], pc["max_pairs"], mean_columns(names), select=pc["features"] == "auto",
                              other=other)

    def big_enough(idx: list[int]) -> bool:
        same = np.concatenate([labs[i][0] for i in idx])
        group = np.concatenate([labs[i][2] for i in idx])
        return int(same.sum()) >= pc["min_positive"] and len(set(group[same])) >= pc["min_identities"]

    out: dict[str, PairFit] = {}
    oof: list[np.ndarray] = [np.zeros(0, np.float32)] * len(tables)

    def spread(f: PairFit, idx: list[int]) -> None:
        offset = 0
        for i in idx:
            n = len(labs[i][0])
            oof[i] = f.oof[offset:offset + n]
            offset += n

    small = [d for d, idx in by_ds.items() if not big_enough(idx)]
    for ds, idx in by_ds.items():
        if ds not in small:
            out[ds] = fit(idx)
            spread(out[ds], idx)
    if small:
        own = list(oof)
        pooled = fit(list(range(len(tables))))
        spread(pooled, list(range(len(tables))))
        names = ", ".join(sorted(by_ds))
        for i, t in enumerate(tables):
            if t.dataset not in small:
                oof[i] = own[i]
        for ds in small:
            pos = int(sum(labs[i][0].sum() for i in by_ds[ds]))
            out[ds] = PairFit(pooled.model, np.zeros(0, np.float32), pooled.cv, pooled.n_pairs, pooled.n_positive,
                              note=f"too few labelled pairs of its own ({pos} true pairs): pair model pooled over "
                                   f"{names}")
    return out, oof


def probability_matrix(cand: Candidates, p: np.ndarray, n_db: int, fallback: np.ndarray) -> np.ndarray:
    """``[R, N] float32`` image scores: P(same) on each row's candidates, and below every P elsewhere (-2 +
    ``fallback [R, N]``, the mean cosine: photos outside the shortlist keep their global order, for R-k and mAP)."""
    out = (np.asarray(fallback, np.float32) - 2.0).copy()
    ok = cand.valid
    rows = np.broadcast_to(np.arange(len(ok))[:, None], ok.shape)
    out[rows[ok], cand.index[ok]] = p
    assert out.shape[1] == n_db
    return out


def flanks(frame: pd.DataFrame) -> np.ndarray:
    return flank(frame["orientation"].tolist()) if "orientation" in frame.columns else np.zeros(len(frame), np.int8)
