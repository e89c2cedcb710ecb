"""The competition score as a function of the threshold tau, and tau chosen to maximise it.

A query is called new when its open-set score falls below tau. All functions are plain numpy over per-query
arrays: ``score: [Q]`` (higher = more likely known), ``correct: [Q] bool`` (the top-1 identity is right; ignored
for unknowns), ``unknown: [Q] bool``, ``identity: [Q]`` (true identities: the balancing groups of BAKS and BAUS).
"""

from __future__ import annotations

import numpy as np

from ..schema import NEW_INDIVIDUAL


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
    identity = np.asarray(identity, dtype=object)
    w_known, w_unknown = np.zeros((1, len(score))), np.zeros((1, len(score)))
    w_known[0, ~unknown] = balanced_weights(identity[~unknown])
    w_unknown[0, unknown] = balanced_weights(identity[unknown])
    taus = np.r_[-np.inf, np.unique(score), np.inf]
    baks, baus = curves_at(score, correct, unknown, w_known, w_unknown, taus)
    return taus, baks[0], baus[0]


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


def score_at(score, correct, unknown, identity, tau: float) -> tuple[float, float, float]:
    """(BAKS, BAUS, sqrt(BAKS*BAUS)) of the calls ``score < tau`` -> new; NaN counts as 0 in the score."""
    new = np.asarray(score, np.float64) < tau
    return score_calls(new, correct, unknown, identity)


def score_calls(new, correct, unknown, identity) -> tuple[float, float, float]:
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
            "insample": score_at(score, correct, unknown, identity, tau)[2],
            "taus": taus, "mean_curve": mean, "boot": boot}
