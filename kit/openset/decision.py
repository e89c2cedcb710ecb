"""Open-set scores over per-query features, and the choice of score and tau on held-out queries.

Candidates (``CANDIDATES``): the best identity score (``top1``), its margin over the second identity
(``margin``), and logistic regressions over a few features (``query_features``), one of them with query-side
evidence (an unknown animal's photos resemble each other more than any database photo). The candidate that wins
an identity-grouped cross-validation of the whole procedure (fit, choose tau, decide unseen identities) is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..splits import name_folds
from .threshold import balanced_weights, fit_threshold, score_calls, score_curve


# Open-set score candidates: name -> the features they read. A single feature is used as it is (higher =
# more likely known); several are combined by a logistic regression fitted on the held-out split.
CANDIDATES: dict[str, tuple[str, ...]] = {
    "top1": ("top1",),
    "margin": ("margin",),
    "logistic": ("top1", "margin"),
    "logistic_qq": ("top1", "margin", "qq_contrast"),
}


def best_other(sims: np.ndarray) -> np.ndarray:
    """[Q] float32: each row's best score to another column of a square [Q, Q] matrix (-1 if Q == 1)."""
    s = np.array(sims, np.float32, copy=True)
    if s.shape[0] < 2:
        return np.full(s.shape[0], -1.0, np.float32)
    np.fill_diagonal(s, -np.inf)
    return s.max(axis=1)


def query_features(id_scores: np.ndarray, db_best: np.ndarray | None = None,
                   query_best: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-query open-set features, each [Q] float64, higher = more likely a known individual.

    id_scores: [Q, I] identity scores of one pipeline; db_best: [Q] best global cosine to a database image;
    query_best: [Q] best global cosine to another query of the same set (``best_other``).
      top1: best identity score; margin: top1 minus the second identity's score (0 with one identity);
      qq_contrast (only when db_best and query_best are given): db_best - query_best. An unknown animal's
      photos are all among the queries, so its nearest photo tends to be a query, not a database photo.
    """
    s = np.asarray(id_scores, np.float64)
    if s.shape[1] >= 2:
        top2 = -np.partition(-s, 1, axis=1)[:, :2]
        feats = {"top1": top2[:, 0], "margin": top2[:, 0] - top2[:, 1]}
    else:
        feats = {"top1": s[:, 0].copy(), "margin": np.zeros(len(s))}
    if db_best is not None and query_best is not None:
        feats["qq_contrast"] = np.asarray(db_best, np.float64) - np.asarray(query_best, np.float64)
    return feats


@dataclass
class Scorer:
    """An open-set score over named features: one feature as it is, or a logistic regression over several.

    ``fit`` learns standardisation and weights (logistic only) from labelled queries; calling the scorer
    gives [Q] float64 (a logistic's log-odds of "known"). sklearn-style: construct, fit, call.
    """

    name: str
    features: tuple[str, ...]
    C: float = 1.0  # inverse L2 strength of the logistic regression
    mean: np.ndarray | None = field(default=None, repr=False)
    scale: np.ndarray | None = field(default=None, repr=False)
    coef: np.ndarray | None = None
    intercept: float = 0.0

    @property
    def learned(self) -> bool:
        return len(self.features) > 1

    def _matrix(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        missing = [f for f in self.features if f not in feats]
        if missing:
            raise KeyError(f"open-set scorer {self.name!r} needs features {missing}; have {sorted(feats)}")
        return np.column_stack([np.asarray(feats[f], np.float64) for f in self.features])

    def fit(self, feats: dict[str, np.ndarray], correct: np.ndarray, unknown: np.ndarray,
            identity: np.ndarray) -> "Scorer":
        """Fit on held-out queries: known queries whose top-1 identity is right (1) against unknown ones
        (0), each class weighted like BAKS/BAUS (equal total per class, equal per identity within it).
        Known queries with a wrong top-1 are left out: whatever is decided for them, the score is the same.
        With no such pair of classes the scorer falls back to the unweighted sum of standardised features."""
        if not self.learned:
            return self
        x = self._matrix(feats)
        unknown, identity = np.asarray(unknown, bool), np.asarray(identity, dtype=object)
        pos = np.asarray(correct, bool) & ~unknown
        keep = pos | unknown
        ref = x[keep] if keep.any() else x
        self.mean = ref.mean(axis=0)
        self.scale = np.where(ref.std(axis=0) > 0, ref.std(axis=0), 1.0)
        if not pos.any() or not unknown.any():
            self.coef, self.intercept = np.ones(x.shape[1]), 0.0
            return self
        from sklearn.linear_model import LogisticRegression

        w = np.zeros(len(x))
        w[pos] = balanced_weights(identity[pos])
        w[unknown] = balanced_weights(identity[unknown])
        model = LogisticRegression(C=self.C).fit((x[keep] - self.mean) / self.scale, pos[keep].astype(int),
                                                 sample_weight=w[keep] * keep.sum())
        self.coef, self.intercept = model.coef_[0].copy(), float(model.intercept_[0])
        return self

    def __call__(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        x = self._matrix(feats)
        if not self.learned:
            return x[:, 0]
        if self.coef is None:
            raise RuntimeError(f"open-set scorer {self.name!r} is used before fit()")
        return (x - self.mean) / self.scale @ self.coef + self.intercept


def make_scorer(name: str) -> Scorer:
    if name not in CANDIDATES:
        raise ValueError(f"openset.candidates: unknown candidate {name!r}; choose from {', '.join(CANDIDATES)}")
    return Scorer(name, CANDIDATES[name])


def cross_validate(name: str, feats: dict[str, np.ndarray], correct, unknown, identity, groups,
                   folds: int = 5, repeats: int = 3, seed: int = 0, n_boot: int = 0, jitter: float = 0.0
                   ) -> float:
    """Identity-grouped cross-validated score of the whole procedure for one candidate.

    For each fold of ``groups`` (original identity names: a held-out identity never helps choose its own
    tau), the scorer is fitted and tau chosen (``fit_threshold`` with ``n_boot`` resamples) on the other
    folds, then the fold's queries are called. The
    out-of-fold calls of all queries are scored once with sqrt(BAKS*BAUS); the mean over ``repeats``
    random fold assignments is returned (NaN if there are fewer than 2 groups).
    """
    unknown, correct = np.asarray(unknown, bool), np.asarray(correct, bool)
    identity = np.asarray(identity, dtype=object)
    if len(np.unique(np.asarray(groups, dtype=str))) < 2:
        return float("nan")
    results = []
    for rep in range(repeats):
        fold = name_folds(groups, folds, seed + rep)  # all queries of a group share a fold
        new = np.zeros(len(unknown), bool)
        for f in np.unique(fold):
            test, train = fold == f, fold != f
            sub = {k: v[train] for k, v in feats.items()}
            scorer = make_scorer(name).fit(sub, correct[train], unknown[train], identity[train])
            tau = fit_threshold(scorer(sub), correct[train], unknown[train], identity[train], n_boot, seed,
                                jitter)["tau"]
            new[test] = scorer({k: v[test] for k, v in feats.items()}) < tau
        results.append(score_calls(new, correct, unknown, identity)[2])
    return float(np.mean(results))


def fit_decision(feats: dict[str, np.ndarray], correct, unknown, identity, groups, oc: dict) -> dict:
    """Choose the open-set score and tau on held-out queries (one dataset, one pipeline).

    feats: {feature: [Q]} (``query_features``); correct, unknown: [Q] bool; identity: [Q] balancing groups
    (made unique per pooled split); groups: [Q] original identity names (cross-validation folds);
    oc: the ``openset`` config section.
    Returns {"scorer": Scorer, "candidate", "tau", "heldout_score" (cross-validated estimate of the
    winner), "insample_score" (at tau, on all held-out queries), "candidates": {name: {"cv", "tau",
    "insample", "scorer"}}, "bootstrap": fit_threshold's "boot", "curve": (taus [T], score [T]) of the
    winner on the held-out queries (the resample mean that tau maximises, when openset.bootstrap > 0)}.
    A candidate needing a feature that is absent (e.g. qq_contrast with openset.query_evidence off) is
    skipped. Candidates are compared in config order: a later one wins only by more than openset.min_gain.
    """
    unknown, correct = np.asarray(unknown, bool), np.asarray(correct, bool)
    identity = np.asarray(identity, dtype=object)
    cands: dict[str, dict] = {}
    for name in oc["candidates"]:
        scorer = make_scorer(name)
        if any(f not in feats for f in scorer.features):
            continue
        scorer.fit(feats, correct, unknown, identity)
        s = scorer(feats)
        fit = fit_threshold(s, correct, unknown, identity, oc["bootstrap"], oc["seed"], oc["jitter"])
        cv = cross_validate(name, feats, correct, unknown, identity, groups, oc["cv_folds"],
                            oc["cv_repeats"], oc["seed"], oc["cv_bootstrap"], oc["jitter"])
        cands[name] = {"cv": cv, "tau": fit["tau"], "insample": fit["insample"], "scorer": scorer, "fit": fit}
    if not cands:
        raise ValueError(f"openset.candidates {oc['candidates']}: none can be computed from features "
                         f"{sorted(feats)}; include 'top1'")
    winner = next(iter(cands))
    for name, c in cands.items():
        best = cands[winner]["cv"]
        if np.isfinite(c["cv"]) and (not np.isfinite(best) or c["cv"] > best + oc["min_gain"]):
            winner = name
    w = cands[winner]
    if w["fit"]["taus"] is not None:
        curve = (w["fit"]["taus"], w["fit"]["mean_curve"])
    else:
        taus, baks, baus = score_curve(w["scorer"](feats), correct, unknown, identity)
        curve = (taus, np.nan_to_num(np.sqrt(baks * baus)))
    return {"scorer": w["scorer"], "candidate": winner, "tau": w["tau"],
            "heldout_score": w["cv"] if np.isfinite(w["cv"]) else w["insample"],
            "insample_score": w["insample"], "candidates": cands, "bootstrap": w["fit"]["boot"], "curve": curve}
