"""Open-set decisions: is a query a known individual, or ``new_individual``?

A query is called new when its open-set score (by default its best identity score) falls below a
threshold tau. tau is chosen per dataset on a held-out split of the labelled database, whose unknown
individuals play the role of the competition's new ones, to maximise the competition's own score
sqrt(BAKS * BAUS) on that split.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

NEW = "new_individual"


def balanced_weights(groups: np.ndarray) -> np.ndarray:
    """[Q] float64 weights that sum to 1, equal per group and shared equally within it (BAKS/BAUS balance)."""
    groups = np.asarray(groups, dtype=object)
    if len(groups) == 0:
        return np.zeros(0)
    _, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[inv])


def score_curve(score: np.ndarray, correct: np.ndarray, unknown: np.ndarray, identity: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BAKS, BAUS and sqrt(BAKS*BAUS) for every useful threshold, in O(Q log Q).

    score: [Q] float32 open-set score (higher = more likely known); correct: [Q] bool, the top-1 identity
    is right (ignored for unknowns); unknown: [Q] bool; identity: [Q] true identities.
    Predicting "new" when score < tau, the thresholds tried are -inf, each distinct score, and +inf.
    Returns taus: [T] float64, baks: [T], baus: [T] (NaN where the split has no known/unknown queries).
    """
    score = np.asarray(score, np.float64)
    unknown = np.asarray(unknown, bool)
    correct = np.asarray(correct, bool) & ~unknown
    w_known = np.zeros(len(score))
    w_unknown = np.zeros(len(score))
    w_known[~unknown] = balanced_weights(np.asarray(identity)[~unknown])
    w_unknown[unknown] = balanced_weights(np.asarray(identity)[unknown])
    order = np.argsort(score, kind="stable")
    s = score[order]
    taus = np.r_[-np.inf, np.unique(s), np.inf]
    # below[t] = number of sorted queries with score < taus[t]
    below = np.searchsorted(s, taus, side="left")
    cum_known = np.r_[0.0, np.cumsum((w_known * correct)[order])]
    cum_unknown = np.r_[0.0, np.cumsum(w_unknown[order])]
    baks = cum_known[-1] - cum_known[below]  # correct known queries at or above tau
    baus = cum_unknown[below]  # unknown queries below tau
    if not (~unknown).any():
        baks = np.full_like(baks, np.nan)
    if not unknown.any():
        baus = np.full_like(baus, np.nan)
    return taus, baks, baus


def choose_threshold(score, correct, unknown, identity) -> tuple[float, float]:
    """tau maximising sqrt(BAKS*BAUS) on a labelled split, and that score.

    Threshold taus[i] (a distinct score) makes the same calls as any tau in (taus[i-1], taus[i]]. Over the
    first run of equally good thresholds, the centre of that interval is returned: it sits between observed
    scores rather than on one, so a small shift of the score distribution does not flip a call.
    """
    taus, baks, baus = score_curve(score, correct, unknown, identity)
    comp = np.nan_to_num(np.sqrt(baks * baus), nan=0.0)
    best = comp.max()
    idx = np.flatnonzero(np.isclose(comp, best, rtol=0, atol=1e-12))
    lo = hi = idx[0]
    while hi + 1 < len(comp) and np.isclose(comp[hi + 1], best, rtol=0, atol=1e-12):
        hi += 1
    a = taus[lo - 1] if lo >= 1 else -np.inf
    b = taus[hi]
    if np.isfinite(a) and np.isfinite(b):
        tau = (a + b) / 2
    elif np.isfinite(b):  # best is "nothing new": any tau up to the lowest score
        tau = b - 1e-6
    elif np.isfinite(a):  # best is "everything new": any tau above the highest score
        tau = a + 1e-6
    else:
        tau = 0.0
    return float(tau), float(best)


def decide(top_identity: np.ndarray, score: np.ndarray, tau: float) -> np.ndarray:
    """[Q] object: the top identity, or ``new_individual`` where ``score < tau``."""
    return np.where(np.asarray(score) < tau, NEW, np.asarray(top_identity, dtype=object)).astype(object)


def predictions_frame(query_ids, top_identity, score, tau) -> pd.DataFrame:
    return pd.DataFrame({"image_id": np.asarray(query_ids, dtype=object),
                         "identity": decide(top_identity, score, tau)})
