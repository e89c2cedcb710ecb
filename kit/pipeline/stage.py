"""The one pair stage, for both tasks: candidate pairs with every column (descriptors, metric head, matchers,
flanks), on held-out splits of the labelled photos and on the real ones, cross-fitted so that nothing learned is
ever judged on photos or identities it saw.

A held-out split (kit/openset/heldout.py for 2025, kit/cluster's folds for 2026) has pseudo-queries and a gallery,
both labelled. For each split, ``split_table`` trains a head on the split's gallery only (the pseudo-queries'
photos, and the held-out identities, absent from it), projects both sides, and builds the candidates, ranks,
shortlists and identity-weighted local scores against that gallery only: exactly as the real queries meet the
real database. Local match scores stay cached per photo pair, so a pair shared by several splits is matched once.

2025: the pseudo-queries are the split's queries and the gallery its database; 2026: the pseudo-test photos are
both sides (each photo's candidates among the other pseudo-test photos), with the head trained on the pseudo-train.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import head as heads
from ..cache import cache_root
from .local import Plan, score_candidates
from .pairs import Candidates, PairTable, candidates, combine, flanks


def train_head(embs: dict[str, np.ndarray], labels: np.ndarray, conf: dict, force: bool = False
               ) -> heads.Head | None:
    """A metric head on ``embs {descriptor: [N, D]}`` (side by side) with identities ``labels [N]``, or None when
    ``head.enabled`` / too few identities with two photos say no. ``force``: the dataset's head is on, so a split of
    it gets one too whenever it has two identities (its pair columns must match the real queries')."""
    ok, _ = heads.trainable(labels, {**conf["head"], "enabled": True} if force else conf["head"])
    if not ok or not embs:
        return None
    return heads.fit_head(combine(embs), labels, conf["head"], cache_root(conf["cache"]))


def with_head(embs: dict[str, np.ndarray], head: heads.Head | None) -> dict[str, np.ndarray]:
    """``embs`` plus the head's projection of them (``head``: [N, d]) when there is a head."""
    if head is None:
        return embs
    return {**embs, heads.HEAD: head.project(combine(embs))}


def order_by(embs: dict[str, np.ndarray], conf: dict) -> tuple[str, ...]:
    """The descriptors whose mean cosine orders a shortlist: the head alone (``head.shortlist: head``), or all."""
    if conf["head"]["shortlist"] == "head" and heads.HEAD in embs:
        return (heads.HEAD,)
    return tuple(embs)


def pair_candidates(embs_q: dict, embs_db: dict, frame_q: pd.DataFrame, frame_db: pd.DataFrame, conf: dict,
                    plan: Plan, k: int, exclude_self: bool = False, local: bool = True) -> Candidates:
    """Candidates of every row of ``frame_q`` in ``frame_db`` (``embs_*``: {descriptor: [R, D] / [N, D]}, the head's
    included), with the first ``plan.topk`` of each row matched by the plan's matchers (when ``local``)."""
    labels = frame_db["identity"].to_numpy(dtype=object) if "identity" in frame_db.columns \
        else np.arange(len(frame_db)).astype(object)
    cand = candidates(embs_q, embs_db, labels, k, int(conf["rerank"]["per_identity"]), exclude_self,
                      flanks(frame_q), flanks(frame_db), order_by(embs_db, conf))
    if local and plan.scorers:
        skip = np.zeros(cand.index.shape, bool)
        skip[:, plan.topk:] = True  # candidates past the plan's shortlist keep their global evidence only
        if conf["rerank"]["skip_opposite_flanks"]:
            skip |= cand.cols["flank_opposite"] > 0
        score_candidates(plan, cand, frame_q["filepath"].tolist(), frame_db["filepath"].tolist(), labels, conf, skip)
    return cand


def split_table(part: pd.DataFrame, embs: dict[str, np.ndarray], qi: np.ndarray, di: np.ndarray, conf: dict,
                plan: Plan, k: int, exclude_self: bool = False, head_rows: np.ndarray | None = None,
                use_head: bool = True) -> tuple[PairTable, dict, dict]:
    """One held-out split's labelled pair table: pseudo-queries ``part`` rows ``qi [R] int`` against gallery rows
    ``di [N] int`` (``embs``: {descriptor: [len(part), D] float32}), with a head trained on ``head_rows`` alone
    (default ``di``: the gallery), when ``use_head`` (the dataset's own head is on).

    2025 passes the split's query rows and database rows; 2026 passes the pseudo-test rows as both (with
    ``exclude_self``) and the pseudo-train rows as ``head_rows``. Returns (table, {descriptor: [R, D]} of the
    queries, {descriptor: [N, D]} of the gallery), the head's projection included."""
    labels = part["identity"].to_numpy(dtype=object)
    hr = di if head_rows is None else head_rows
    head = train_head({d: e[hr] for d, e in embs.items()}, labels[hr], conf, force=True) if use_head else None
    eq = with_head({d: e[qi] for d, e in embs.items()}, head)
    ed = with_head({d: e[di] for d, e in embs.items()}, head)
    fq, fd = part.iloc[qi], part.iloc[di]
    cand = pair_candidates(eq, ed, fq, fd, conf, plan, k, exclude_self)
    return PairTable(cand, labels[qi], labels[di], str(part["dataset"].iloc[0])), eq, ed
