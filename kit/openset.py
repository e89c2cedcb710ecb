"""Open-set decisions: is a query a known individual, or ``new_individual``?

A query is called new when its open-set score falls below a threshold tau. Both are chosen per dataset
(and pipeline) from the labelled database alone:

1. Held-out splits. Whole identities of the database are held out as unknown individuals, together with
   query images of the known ones (``calibration_splits``). A small dataset gets several such splits, with
   different identities held out, pooled until about ``openset.n_unknown`` unknown images have been seen.
2. Open-set scores (``CANDIDATES``): the best identity score (``top1``), its margin over the second identity
   (``margin``), and logistic regressions over a few per-query features (``query_features``), one of them
   with query-side evidence (an unknown animal's photos resemble each other more than any database photo).
3. The candidate that wins an identity-grouped cross-validation of the whole procedure (fit, choose tau,
   decide unseen identities) is kept; tau maximises the competition score sqrt(BAKS * BAUS) on all the
   held-out queries, averaged over identity resamples (``fit_threshold``), which also give its uncertainty.

All functions are plain numpy over per-query arrays: ``score: [Q]``, ``correct: [Q] bool`` (the top-1
identity is right; ignored for unknowns), ``unknown: [Q] bool``, ``identity: [Q]`` (true identities, the
balancing groups of BAKS and BAUS).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .schema import NEW_INDIVIDUAL


# Open-set score candidates: name -> the features they read. A single feature is used as it is (higher =
# more likely known); several are combined by a logistic regression fitted on the held-out split.
CANDIDATES: dict[str, tuple[str, ...]] = {
    "top1": ("top1",),
    "margin": ("margin",),
    "logistic": ("top1", "margin"),
    "logistic_qq": ("top1", "margin", "qq_contrast"),
}


# ---------------------------------------------------------------------------------------------------------
# The competition score as a function of tau


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


def evaluate(score, correct, unknown, identity, tau: float) -> tuple[float, float, float]:
    """(BAKS, BAUS, sqrt(BAKS*BAUS)) of the calls ``score < tau`` -> new; NaN counts as 0 in the score."""
    new = np.asarray(score, np.float64) < tau
    return evaluate_calls(new, correct, unknown, identity)


def evaluate_calls(new, correct, unknown, identity) -> tuple[float, float, float]:
    """(BAKS, BAUS, score) of given calls: new: [Q] bool (called new_individual)."""
    new, unknown = np.asarray(new, bool), np.asarray(unknown, bool)
    correct = np.asarray(correct, bool)
    identity = np.asarray(identity, dtype=object)
    baks = float(np.sum(balanced_weights(identity[~unknown]) * (correct[~unknown] & ~new[~unknown]))) \
        if (~unknown).any() else float("nan")
    baus = float(np.sum(balanced_weights(identity[unknown]) * new[unknown])) if unknown.any() else float("nan")
    return baks, baus, float(np.sqrt(np.nan_to_num(baks) * np.nan_to_num(baus)))


def decide(top_identity: np.ndarray, score: np.ndarray, tau: float) -> np.ndarray:
    """[Q] object: the top identity, or ``new_individual`` where ``score < tau``."""
    return np.where(np.asarray(score) < tau, NEW_INDIVIDUAL, np.asarray(top_identity, dtype=object)).astype(object)


def predictions_frame(query_ids, top_identity, score, tau) -> pd.DataFrame:
    return pd.DataFrame({"image_id": np.asarray(query_ids, dtype=object),
                         "identity": decide(top_identity, score, tau)})


# ---------------------------------------------------------------------------------------------------------
# Held-out calibration splits


def n_repeats(n_unknown_seen: int, n_unknown_target: int, setting, max_repeats: int) -> int:
    """How many held-out splits to pool: ``setting`` when an int, else ("auto") enough splits for about
    ``n_unknown_target`` unknown images in total when one split holds ``n_unknown_seen``, at most
    ``max_repeats``."""
    if setting != "auto":
        return max(1, int(setting))
    if n_unknown_seen <= 0:
        return 1
    return int(np.clip(np.ceil(n_unknown_target / n_unknown_seen), 1, max(1, max_repeats)))


def calibration_splits(db: pd.DataFrame, n_unknown: int, query_fraction: float, repeats, max_repeats: int,
                       seed: int) -> list[pd.DataFrame]:
    """Held-out open-set splits of one dataset's labelled images (``db``: columns identity, dataset).

    Each split is ``splits.open_set_split`` with seed ``seed + r`` (columns split, new_identity added): whole
    identities held out as unknown queries (about ``n_unknown`` images, capped for a small dataset), and
    ``query_fraction`` of each known identity's images as known queries. Splits where either kind of query
    is missing are dropped; an empty list means the dataset is too small to calibrate on.
    """
    from .splits import open_set_split

    out: list[pd.DataFrame] = []
    first = open_set_split(db, n_unknown=n_unknown, query_fraction=query_fraction, seed=seed)
    want = n_repeats(int(first["new_identity"].sum()), n_unknown, repeats, max_repeats)
    for r in range(want):
        s = first if r == 0 else open_set_split(db, n_unknown=n_unknown, query_fraction=query_fraction,
                                                seed=seed + r)
        q = s[s["split"] == "query"]
        if q["new_identity"].any() and (~q["new_identity"]).any():
            out.append(s)
    return out


def estimate_unknown_share(real: np.ndarray, known: np.ndarray, unknown: np.ndarray) -> float:
    """Share of unknown individuals among unlabelled queries, from their score distribution.

    real: [Q] scores of the unlabelled queries; known, unknown: scores of labelled held-out known and
    unknown queries. Fits the empirical CDF of ``real`` as ``pi * F_unknown + (1 - pi) * F_known`` by least
    squares over the pooled scores (closed form), clipped to [0, 1]. NaN when a sample is empty or the two
    labelled distributions are identical.
    """
    real, known, unknown = (np.sort(np.asarray(a, np.float64)) for a in (real, known, unknown))
    if not (len(real) and len(known) and len(unknown)):
        return float("nan")
    grid = np.unique(np.r_[real, known, unknown])
    cdf = [np.searchsorted(a, grid, side="right") / len(a) for a in (real, known, unknown)]
    d_real, d_unknown = cdf[0] - cdf[1], cdf[2] - cdf[1]
    den = float(d_unknown @ d_unknown)
    if den <= 0:
        return float("nan")
    return float(np.clip(d_real @ d_unknown / den, 0.0, 1.0))


def matched_query_fraction(unknown_share: float, n_unknown_images: int, n_known_images: int,
                           default: float, lo: float = 0.1, hi: float = 0.5) -> float:
    """Share of each known identity's images to hold out as queries so that known:unknown queries match an
    estimated ``unknown_share`` of the real queries; ``default`` when the share is unknown or 0/1."""
    if not np.isfinite(unknown_share) or not 0 < unknown_share < 1 or n_known_images <= 0:
        return default
    want_known = n_unknown_images * (1 - unknown_share) / unknown_share
    return float(np.clip(want_known / n_known_images, lo, hi))


# ---------------------------------------------------------------------------------------------------------
# Per-query features and open-set scorers


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


# ---------------------------------------------------------------------------------------------------------
# Choosing the candidate and tau


def _fold_of(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """[Q] int: a random fold per group (all queries of a group share one), deterministic by seed."""
    names, inv = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    rng = np.random.default_rng([seed, zlib.crc32("|".join(names).encode())])
    fold_of_name = rng.permutation(len(names)) % folds
    return fold_of_name[inv]


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
        fold = _fold_of(groups, folds, seed + rep)
        new = np.zeros(len(unknown), bool)
        for f in np.unique(fold):
            test, train = fold == f, fold != f
            sub = {k: v[train] for k, v in feats.items()}
            scorer = make_scorer(name).fit(sub, correct[train], unknown[train], identity[train])
            tau = fit_threshold(scorer(sub), correct[train], unknown[train], identity[train], n_boot, seed,
                                jitter)["tau"]
            new[test] = scorer({k: v[test] for k, v in feats.items()}) < tau
        results.append(evaluate_calls(new, correct, unknown, identity)[2])
    return float(np.mean(results))


def resample_weights(unknown, identity, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Identity bootstrap as row weights: [n, Q] float64 BAKS weights and [n, Q] BAUS weights.

    Each resample draws the known identities with replacement (and, apart, the unknown ones); an identity
    drawn m times weighs m / (G * its query count), G the number of identities of its class, so each
    resample's weights of a class sum to 1, exactly as balanced_weights on the duplicated rows would.
    Deterministic by seed.
    """
    unknown, identity = np.asarray(unknown, bool), np.asarray(identity, dtype=object)
    rng = np.random.default_rng(seed)
    out = []
    for mask in (~unknown, unknown):
        w = np.zeros((n, len(unknown)))
        if mask.any():
            _, codes, counts = np.unique(identity[mask].astype(str), return_inverse=True, return_counts=True)
            g = len(counts)
            m = rng.multinomial(g, np.full(g, 1.0 / g), size=n)  # [n, G] draws per identity
            w[:, mask] = m[:, codes] / (counts[codes] * g)
        out.append(w)
    return out[0], out[1]


def curves_at(score, correct, unknown, w_known: np.ndarray, w_unknown: np.ndarray, taus: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """BAKS and BAUS [B, T] of the calls ``score < tau`` for each tau of ``taus`` ([T], or [B, T]: its own
    thresholds per row) and each of B weight rows (``resample_weights``); NaN where a class has no query."""
    score, unknown = np.asarray(score, np.float64), np.asarray(unknown, bool)
    correct = np.asarray(correct, bool) & ~unknown
    order = np.argsort(score, kind="stable")
    taus = np.asarray(taus, np.float64)
    below = np.searchsorted(score[order], taus.ravel(), side="left").reshape(taus.shape)
    below = np.broadcast_to(below, (len(w_known), taus.shape[-1]))
    zero = np.zeros((len(w_known), 1))
    ck = np.hstack([zero, np.cumsum((w_known * correct)[:, order], axis=1)])
    cu = np.hstack([zero, np.cumsum(w_unknown[:, order], axis=1)])
    baks = ck[:, -1:] - np.take_along_axis(ck, below, axis=1)
    baus = np.take_along_axis(cu, below, axis=1)
    if not (~unknown).any():
        baks = np.full_like(baks, np.nan)
    if not unknown.any():
        baus = np.full_like(baus, np.nan)
    return baks, baus


def candidate_taus(score, max_taus: int = 2000) -> np.ndarray:
    """[T] thresholds worth trying: midway between consecutive distinct scores, and just outside both ends
    (nothing new / everything new); at most ``max_taus``, thinned by quantile when there are more."""
    s = np.unique(np.asarray(score, np.float64))
    if len(s) > max_taus:
        s = np.unique(np.quantile(s, np.linspace(0, 1, max_taus)))
    if len(s) == 0:
        return np.zeros(1)
    eps = 1e-6 * max(1.0, float(np.abs(s).max()))
    return np.r_[s[0] - eps, (s[1:] + s[:-1]) / 2, s[-1] + eps]


def fit_threshold(score, correct, unknown, identity, n_boot: int = 200, seed: int = 0, jitter: float = 0.0
                  ) -> dict:
    """tau for the calls ``score < tau`` -> new, chosen to maximise sqrt(BAKS*BAUS) averaged over
    ``n_boot`` identity resamples of the labelled split (a smoothed curve: a narrow spike next to a cliff
    does not win), with the uncertainty of that choice. ``n_boot`` 0: plain argmax (choose_threshold).
    ``jitter`` > 0 also shifts each resample's threshold by a normal draw of sd ``jitter`` x the scores'
    sd: a tau right at the edge of a cliff loses to one that survives a small shift of the real queries'
    scores (a bigger gallery, other photos).

    Returns {"tau", "expected" (mean resampled score at tau), "insample" (score at tau on the split),
    "taus" [T], "mean_curve" [T], "boot": {"n", "tau_lo", "tau_hi", "tau_sd", "score_lo", "score_hi",
    "score_sd"} (5th-95th percentiles and sd of each resample's own best tau and of its score at tau)}.
    Deterministic by seed.
    """
    if n_boot <= 0:
        tau, best = choose_threshold(score, correct, unknown, identity)
        return {"tau": tau, "expected": best, "insample": best, "taus": None, "mean_curve": None, "boot": {}}
    taus = candidate_taus(score)
    wk, wu = resample_weights(unknown, identity, n_boot, seed)
    baks, baus = curves_at(score, correct, unknown, wk, wu, taus)
    comp = np.nan_to_num(np.sqrt(baks * baus))  # [B, T]
    mean = comp.mean(axis=0)
    if jitter > 0:
        sd = jitter * float(np.std(score))
        shift = np.random.default_rng([seed, 1]).normal(0.0, sd, (n_boot, 1))
        jb, ju = curves_at(score, correct, unknown, wk, wu, taus[None, :] + shift)
        mean = np.nan_to_num(np.sqrt(jb * ju)).mean(axis=0)
    top = np.isclose(mean, mean.max(), rtol=0, atol=1e-12)
    first = int(np.argmax(top))
    run = first + int(np.argmin(np.r_[top[first:], False]))  # end (exclusive) of the first best run
    i = (first + run - 1) // 2
    tau = float(taus[i])
    best_each = taus[comp.argmax(axis=1)]
    at_tau = comp[:, i]
    p = lambda a, q: float(np.percentile(a, q))  # noqa: E731
    boot = {"n": int(n_boot), "tau_lo": p(best_each, 5), "tau_hi": p(best_each, 95),
            "tau_sd": float(best_each.std()), "score_lo": p(at_tau, 5), "score_hi": p(at_tau, 95),
            "score_sd": float(at_tau.std())}
    return {"tau": tau, "expected": float(comp[:, i].mean()),
            "insample": evaluate(score, correct, unknown, identity, tau)[2],
            "taus": taus, "mean_curve": mean, "boot": boot}


def calibrate(feats: dict[str, np.ndarray], correct, unknown, identity, groups, oc: dict) -> dict:
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
