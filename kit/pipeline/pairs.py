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

from ..pairmodel import PairFit, fit_pair_model
from ..retrieve import dedup_shortlist
from ..schema import flank

GLOBAL, FUSED = "global", "fused"
HEAD = "+head"  # suffix of a pipeline that also reads the metric head's columns (kit/head.py)


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
               per_identity: int, exclude_self: bool, flank_q, flank_db, exclude: np.ndarray | None = None,
               ranks: bool = True) -> Candidates:
    """The shortlist of each row of ``embs_q`` in the database, with the global and flank columns filled.

    ``embs_*``: {descriptor: [R, D] / [N, D]} L2-normalised; ``exclude_self``: the rows ARE the database (pseudo-
    queries), so row i never lists itself. ``exclude [R, N] bool``: database photos a row must not see at all (a
    pretend-new photo's own identity): never listed, and not counted in any rank. ``k``: shortlist length (N or
    more = every photo). ``ranks=False`` leaves out the ``rank:`` columns (three [R, N] int64 arrays to build).
    """
    names = list(embs_db)
    sims = {d: embs_q[d] @ embs_db[d].T for d in names}  # [R, N] each
    mean = sum(sims.values()) / len(names)
    if exclude_self:
        for s in (mean, *sims.values()):
            np.fill_diagonal(s, -np.inf)
    if exclude is not None:
        for s in (mean, *sims.values()):
            s[exclude] = -np.inf
    n = mean.shape[1]
    index = dedup_shortlist(mean, labels_db, min(k, n), per_identity)
    out = Candidates(index)
    safe = np.clip(index, 0, None)
    for d in names:
        out.cols[f"cos:{d}"] = np.where(index >= 0, np.take_along_axis(sims[d], safe, 1), 0).astype(np.float32)
        if ranks:
            out.cols[f"rank:{d}"] = _ranks(sims[d], index)
    fq, fd = np.asarray(flank_q), np.asarray(flank_db)[safe]
    known = (fq[:, None] > 0) & (fd > 0)
    out.cols["flank_same"] = (known & (fq[:, None] == fd)).astype(np.float32)
    out.cols["flank_opposite"] = (known & (fq[:, None] != fd)).astype(np.float32)
    return out


def add_head(cand: Candidates, sims: np.ndarray) -> None:
    """Put the metric head's columns into ``cand``: ``cos:head`` and ``rank:head`` from ``sims [R, N] float32``,
    each row's cosines in the space of a head that never saw that row's photo (kit/head.py ``cross_fitted``);
    -inf marks photos the row must not see (itself, or its own identity when it plays a new animal)."""
    safe = np.clip(cand.index, 0, None)
    cand.cols["cos:head"] = np.where(cand.valid, np.take_along_axis(sims, safe, 1), 0).astype(np.float32)
    cand.cols["rank:head"] = _ranks(sims, cand.index)


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
    """The columns a pipeline's pair model reads: global ones only, or all; the head's only in a ``+head`` one."""
    glob = ("cos:", "rank:", "flank_")
    base = pipeline.removesuffix(HEAD)
    return tuple(n for n in cols if (base == FUSED or n.startswith(glob))
                 and (pipeline.endswith(HEAD) or not n.endswith(":head")))


def mean_columns(names: tuple[str, ...]) -> tuple[str, str | None]:
    """The two columns the ``mean`` method averages: the first cosine and the first match count."""
    cos = next(n for n in names if n.startswith("cos:"))
    local = next((n for n in names if n.endswith(":n_matches")), None)
    return cos, local


def fit_models(tables: dict[str, tuple], pipeline: str, pc: dict) -> dict[str, PairFit]:
    """One pair model per dataset for ``pipeline``, fitted on its database candidates; a dataset too small to fit
    its own (fewer than ``pairmodel.min_identities`` identities with a true candidate, or fewer than
    ``pairmodel.min_positive`` true pairs) gets the model pooled over all datasets, and says so.

    ``tables``: {dataset: (its database Candidates, identity keys [N] of its database rows[, the pretend-new
    Candidates of the same rows])}. The model is fitted on the first; the pretend-new rows are only predicted, each
    by the fold model that never saw its identity. Folds are identity-strict: a fold's model never fitted a pair
    with either photo's identity in that fold. Returns {dataset: PairFit} whose ``oof`` covers that dataset's valid
    candidates, row-major, the database rows' first and then the pretend-new rows'.
    """
    flat, same, query, group, group_b, fitted = {}, {}, {}, {}, {}, {}
    for ds, table in tables.items():
        labels = table[1]
        parts = [("", table[0], True)] + ([("new", table[2], False)] if len(table) > 2 else [])
        cols, cat = [], {k: [] for k in ("same", "query", "group", "group_b", "fitted")}
        for tag, cand, fit_on in parts:
            ok = cand.valid
            rows = np.broadcast_to(np.arange(len(ok))[:, None], ok.shape)[ok]
            cols.append(cand.flat())
            cat["same"].append(labels[rows] == labels[cand.index[ok]])
            cat["query"].append(np.array([f"{ds}/{tag}{r}" for r in rows], dtype=object))
            cat["group"].append(np.array([f"{ds}/{labels[r]}" for r in rows], dtype=object))
            cat["group_b"].append(np.array([f"{ds}/{x}" for x in labels[cand.index[ok]]], dtype=object))
            cat["fitted"].append(np.full(len(rows), fit_on))
        flat[ds] = {n: np.concatenate([c[n] for c in cols]) for n in cols[0]}
        same[ds], query[ds], group[ds], group_b[ds], fitted[ds] = (np.concatenate(cat[k]) for k in cat)

    def fit(names_of: list[str]) -> PairFit:
        cols = {n: np.concatenate([flat[d][n] for d in names_of]) for n in flat[names_of[0]]}
        names = feature_names(cols, pipeline)
        if pc["features"] not in ("auto", "all"):
            names = tuple(n for n in names if n.startswith(tuple(pc["features"]))) or names
        cat = lambda part: np.concatenate([part[d] for d in names_of])  # noqa: E731
        return fit_pair_model(cols, names, cat(same), cat(query), cat(group), pc["method"], pc["cv_folds"],
                              pc["min_gain"], pc["seed"], pc["max_pairs"], mean_columns(names),
                              select=pc["features"] == "auto", group_b=cat(group_b), fit_mask=cat(fitted))

    def big_enough(ds: str) -> bool:
        s = same[ds]
        ids_with_match = len(set(group[ds][s]))
        return int(s.sum()) >= pc["min_positive"] and ids_with_match >= pc["min_identities"]

    out: dict[str, PairFit] = {}
    small = [d for d in tables if not big_enough(d)]
    for ds in tables:
        if ds not in small:
            out[ds] = fit([ds])
    if small:
        pooled_names = sorted(tables)
        pooled = fit(pooled_names)
        offset = 0
        for ds in pooled_names:
            n = len(same[ds])
            if ds in small:
                out[ds] = PairFit(pooled.model, pooled.oof[offset:offset + n], pooled.cv, n, int(same[ds].sum()),
                                  note=f"too few labelled pairs of its own ({int(same[ds].sum())} true pairs): "
                                       f"pair model pooled over {', '.join(pooled_names)}")
            offset += n
    return out


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
