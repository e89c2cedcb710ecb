"""A 2025 dataset's review page, as plain data: each query with its candidates, the kit's decision, the doubt.

``identification_page`` takes the evidence kit/pipeline/identification.py computed (``sims [Q, N]``: per-photo
P(same) for shortlisted pairs, -2 + cosine for the rest; ``identities [I]``; ``id_scores [Q, I]``) with the open-set
score and tau, and gives one dict per query: its photo, its ``review.candidates`` best identities (each by its
best-matching photo, with P(same individual)), the local matches of the first ``review.drawn`` of them, the
decision, and how uncertain it is. Photos are paths here; kit/review/site.py turns them into thumbnails.

Uncertainty (``query_order``): a query is doubtful when its open-set score lies near tau (known vs new could go
either way) or when its top two identities are close (which known one could go either way). Both are ranked among
the dataset's queries and the worse rank counts. With answers (``kit validate --review``) the errors come first:
wrong identities, then missed new individuals, then false ``new_individual`` calls, then the correct ones.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from ..schema import NEW_INDIVIDUAL

STATUS_ORDER = ("wrong_identity", "missed_new", "false_new", "correct")  # error analysis: errors first


class PhotoIndex:
    """Photo paths numbered in order of first use: a page names each photo by its number."""

    def __init__(self):
        self.paths: list[str] = []
        self._index: dict[str, int] = {}

    def __call__(self, path: str) -> int:
        path = str(path)
        if path not in self._index:
            self._index[path] = len(self.paths)
            self.paths.append(path)
        return self._index[path]


def _pct_rank(x: np.ndarray) -> np.ndarray:
    """[Q] float64 rank of each value among ``x`` in (0, 1], ascending, ties averaged; NaN ranks last (1.0)."""
    s = pd.Series(np.asarray(x, np.float64))
    return s.rank(pct=True, method="average").fillna(1.0).to_numpy()


def query_order(openset_score: np.ndarray, tau: float | None, id_scores: np.ndarray, status=None
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(``order [Q]``, ``uncertainty [Q]`` in [0, 1), ``reason [Q]``): the most uncertain queries first.

    ``openset_score [Q]`` against ``tau``; ``id_scores [Q, I]`` (their top two, clipped at 0, give the gap).
    ``status [Q]`` (with answers): STATUS_ORDER ranks first, uncertainty second.
    """
    q = len(id_scores)
    near_tau = np.abs(np.asarray(openset_score, np.float64) - tau) if tau is not None else np.full(q, np.nan)
    top = -np.sort(-np.clip(id_scores, 0, None), axis=1)[:, :2] if id_scores.size else np.zeros((q, 0))
    gap = top[:, 0] - (top[:, 1] if top.shape[1] > 1 else 0.0) if top.shape[1] else np.full(q, np.nan)
    r_tau, r_gap = _pct_rank(near_tau), _pct_rank(gap)
    uncertainty = 1.0 - np.minimum(r_tau, r_gap) if q else np.zeros(0)
    reason = [(f"open-set score near tau (|score - tau| = {t:.3f})" if rt <= rg else
               f"top two candidates close (P1 - P2 = {g:.3f})") if t == t or g == g else "no evidence"
              for t, g, rt, rg in zip(near_tau, gap, r_tau, r_gap)]
    key = -uncertainty
    if status is not None:
        rank = np.array([STATUS_ORDER.index(s) for s in status], np.float64)
        order = np.lexsort((key, rank))
    else:
        order = np.argsort(key, kind="stable")
    return order, uncertainty, reason


def statuses(decision: np.ndarray, truth: np.ndarray, new: np.ndarray) -> list[str]:
    """STATUS_ORDER entry of each query from its decision and the answer (identity, is it a new individual)."""
    out = []
    for d, t, n in zip(decision, truth, new):
        if n:
            out.append("correct" if d == NEW_INDIVIDUAL else "missed_new")
        elif d == t:
            out.append("correct")
        else:
            out.append("false_new" if d == NEW_INDIVIDUAL else "wrong_identity")
    return out


def identification_page(dataset: str, queries: pd.DataFrame, db: pd.DataFrame, evidence: dict | None,
                        decision, openset_score, tau: float | None, rc: dict, *, score_name: str = "top1",
                        matcher: Callable[[np.ndarray], list[dict]] | None = None, local_note: str = "",
                        truth: pd.DataFrame | None = None) -> dict:
    """One dataset's page data (photos as paths).

    ``queries`` (Q rows: image_id, filepath) and ``db`` (N rows: image_id, identity, filepath) in the order of
    ``evidence``'s rows and columns (None: no database, every query new); ``decision [Q]`` the submitted
    identities; ``openset_score [Q]``; ``rc``: the ``review`` config section; ``matcher``: ``pairs [P, 2]`` (query
    row, database row) -> kit/review/matches.py's dicts, None when local matching is off (``local_note`` says why);
    ``truth`` (validate): Q rows with ``identity`` and ``new_identity``.
    """
    q = len(queries)
    decision = np.asarray(decision, dtype=object)
    score = np.asarray(openset_score if openset_score is not None else np.full(q, np.nan), np.float64)
    photos = PhotoIndex()
    head_cos = None if evidence is None else evidence.get("head_cos")  # [Q, N] when the head was submitted
    if evidence is not None:
        sims = np.asarray(evidence["sims"], np.float32)  # [Q, N]
        identities = np.asarray(evidence["identities"], dtype=object)  # [I]
        id_scores = np.asarray(evidence["id_scores"], np.float32)  # [Q, I]
        codes = pd.Index(identities).get_indexer(db["identity"].to_numpy(dtype=object))  # [N] identity of a column
        assert sims.shape == (q, len(db)) and id_scores.shape == (q, len(identities)) and (codes >= 0).all()
        k = min(int(rc["candidates"]), len(identities))
        top_ids = np.argsort(-id_scores, axis=1, kind="stable")[:, :k]  # [Q, k]
        cols_of = {int(t): np.flatnonzero(codes == t) for t in np.unique(top_ids)}
        best = np.empty((q, k), np.int64)  # [Q, k] the best-matching database photo of each candidate identity
        for c in range(k):
            for t in np.unique(top_ids[:, c]):
                rows, cols = np.flatnonzero(top_ids[:, c] == t), cols_of[int(t)]
                best[rows, c] = cols[np.argmax(sims[np.ix_(rows, cols)], axis=1)]
    else:
        identities, id_scores, k = np.zeros(0, dtype=object), np.zeros((q, 0), np.float32), 0
        top_ids = best = np.zeros((q, 0), np.int64)
    status = None
    if truth is not None:
        status = statuses(decision, truth["identity"].to_numpy(dtype=object), truth["new_identity"].to_numpy(bool))
    order, uncertainty, reason = query_order(score, tau, id_scores, status)
    drawn = min(int(rc["drawn"]), k) if matcher is not None else 0
    matches = {}
    if drawn:
        pairs = np.stack([np.repeat(np.arange(q), drawn), best[:, :drawn].ravel()], 1)
        matches = dict(zip(map(tuple, pairs.tolist()), matcher(pairs)))
    db_ids, db_paths = db["image_id"].to_numpy(dtype=object), db["filepath"].to_numpy(dtype=object)
    q_ids, q_paths = queries["image_id"].to_numpy(dtype=object), queries["filepath"].to_numpy(dtype=object)
    position = {t: i for i, t in enumerate(identities)}
    rows = []
    for r in order:
        cands = []
        for c in range(k):
            j = int(best[r, c])
            p = float(id_scores[r, top_ids[r, c]])
            cand = {"identity": identities[top_ids[r, c]], "image_id": db_ids[j], "photo": photos(db_paths[j]),
                    "p": round(max(p, 0.0), 4), "listed": bool(p > -1), "cos": None if p > -1 else round(p + 2, 4)}
            if head_cos is not None:  # the metric head's cosine of the pair, one of the pair model's columns
                cand["head"] = round(float(head_cos[r, j]), 4)
            m = matches.get((int(r), j))
            if m is not None:
                cand["matches"] = m
            cands.append(cand)
        row = {"image_id": q_ids[r], "photo": photos(q_paths[r]),
               "decision": decision[r], "score": None if score[r] != score[r] else round(float(score[r]), 6),
               "uncertainty": round(float(uncertainty[r]), 4), "reason": reason[r], "candidates": cands}
        if truth is not None:
            t, new = truth["identity"].iloc[r], bool(truth["new_identity"].iloc[r])
            rank = None
            if not new and t in position:
                rank = int((id_scores[r] > id_scores[r, position[t]]).sum()) + 1
            row["truth"] = {"identity": NEW_INDIVIDUAL if new else t, "new": new, "status": status[r], "rank": rank}
        rows.append(row)
    finite = score[np.isfinite(score)]
    span = np.r_[finite, [tau] if tau is not None else []]
    return {"task": "identification", "dataset": dataset, "tau": tau, "score_name": score_name,
            "score_range": [float(span.min()), float(span.max())] if len(span) else [0.0, 1.0],
            "local": {"drawn": drawn, "note": local_note}, "has_truth": truth is not None,
            "photos": photos.paths, "queries": rows,
            "counts": {"queries": q, "new": int((decision == NEW_INDIVIDUAL).sum()),
                       **({s: int(sum(x == s for x in status)) for s in STATUS_ORDER} if status else {})}}
