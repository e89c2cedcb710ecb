"""Open-set decisions: is a query a known individual, or ``new_individual``?

A query is called new when its open-set score falls below a threshold tau. Both are chosen per dataset
(and pipeline) from the labelled database alone:

1. Held-out splits (``heldout.py``). Whole identities of the database are held out as unknown individuals,
   together with query images of the known ones (``calibration_splits``). A small dataset gets several such
   splits, with different identities held out, pooled until about ``openset.n_unknown`` unknown images are seen.
2. Open-set scores (``decision.py``, ``CANDIDATES``): the best identity score (``top1``), its margin over the
   second identity (``margin``), and logistic regressions over a few per-query features (``query_features``),
   one of them with query-side evidence (an unknown animal's photos resemble each other more than any database
   photo).
3. The candidate that wins an identity-grouped cross-validation of the whole procedure (fit, choose tau,
   decide unseen identities) is kept; tau maximises the competition score sqrt(BAKS * BAUS) on all the
   held-out queries, averaged over identity resamples (``fit_threshold``, ``threshold.py``), which also give
   its uncertainty.

All functions are plain numpy over per-query arrays: ``score: [Q]``, ``correct: [Q] bool`` (the top-1
identity is right; ignored for unknowns), ``unknown: [Q] bool``, ``identity: [Q]`` (true identities, the
balancing groups of BAKS and BAUS).
"""

from .decision import CANDIDATES, Scorer, best_other, cross_validate, fit_decision, make_scorer, query_features
from .heldout import calibration_splits, estimate_unknown_share, matched_query_fraction, n_repeats
from .threshold import (balanced_weights, candidate_taus, choose_threshold, curves_at, decide, fit_threshold,
                        resample_weights, score_at, score_calls, score_curve)

__all__ = ["CANDIDATES", "Scorer", "balanced_weights", "best_other", "calibration_splits", "candidate_taus",
           "choose_threshold", "cross_validate", "curves_at", "decide", "estimate_unknown_share", "fit_decision",
           "fit_threshold", "make_scorer", "matched_query_fraction", "n_repeats", "query_features",
           "resample_weights", "score_at", "score_calls", "score_curve"]
