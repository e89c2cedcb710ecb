"""One pair model: a (query, candidate photo) pair's features -> P(same individual).

The features of a pair (kit.pipeline assembles them) are plain columns ``{name: [P] float32}``: each global
descriptor's cosine and rank, each matcher's match counts at two confidence levels, summed confidence, inliers and
identity-weighted score, a missing-match indicator, flank agreement. The model is fitted on labelled pairs of the
DATABASE only (a database photo as a pseudo-query against the others), never on a query label, per dataset,
because weights that fit one species hurt another (lion crops: RootSIFT alone 0.44, equal z-fusion 0.29).

Methods (``pairmodel.method``): ``logistic`` (standardised logistic regression), ``lightgbm`` (gradient boosting),
``mean`` (the mean of isotonic P(same) of the first cosine and of the first match count: the older fusion);
``auto`` keeps the one with the best identity-grouped cross-validated MRR (each pseudo-query's rank of its true
identity), preferring earlier ones unless a later one is better by ``min_gain``. The out-of-fold predictions are
what the open-set calibration reads, so tau is never chosen on pairs the model was fitted on.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from .calibration import fit_calibrator
from .splits import name_folds

METHODS = ("logistic", "lightgbm", "mean")
# LightGBM uses a second thread only from this many fitting pairs on: below it the threads' start and busy-wait
# cost more than they save, and far more on a shared machine (a demo-sized fit, 3,600 pairs, on 2 loaded cores:
# 0.6 s with 2 threads, 0.12 s with 1; the same predictions)
LIGHTGBM_THREAD_ROWS = 50_000


@dataclass
class PairModel:
    """A fitted model over named columns; ``predict(cols) -> [P] float32`` P(same individual)."""

    method: str
    names: tuple[str, ...]  # feature columns, in matrix order
    model: object = field(repr=False, default=None)  # the fitted estimator(s)

    def matrix(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        missing = [n for n in self.names if n not in cols]
        if missing:
            raise KeyError(f"pair model needs columns {missing}; have {sorted(cols)}")
        return np.column_stack([np.asarray(cols[n], np.float64) for n in self.names])

    def predict(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        x = self.matrix(cols)
        if self.method == "constant":  # the fitting pairs were all of one kind
            return np.full(len(x), self.model, np.float32)
        if self.method == "mean":
            g, loc = self.model
            p = g.predict(x[:, 0])
            return ((p + loc.predict(x[:, 1])) / 2 if loc is not None else p).astype(np.float32)
        return self.model.predict_proba(x)[:, 1].astype(np.float32)

    def describe(self) -> dict:
        """What a report shows: the method and, for logistic, the weight of each standardised feature."""
        out: dict = {"method": self.method}
        if self.method == "logistic" and self.model is not None:
            out["weights"] = {n: float(w) for n, w in zip(self.names, self.model[-1].coef_[0])}
        if self.method == "lightgbm" and self.model is not None:
            out["gain"] = {n: float(g) for n, g in zip(self.names, self.model.booster_.feature_importance("gain"))}
        return out


def _fit(method: str, names: tuple[str, ...], x: np.ndarray, y: np.ndarray, seed: int,
         mean_cols: tuple[str, str | None]) -> PairModel:
    if y.all() or not y.any():
        return PairModel("constant", names, float(y.mean()) if len(y) else 0.0)
    if method == "logistic":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return PairModel(method, names, make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
                         .fit(x, y))
    if method == "lightgbm":
        import lightgbm

        est = lightgbm.LGBMClassifier(n_estimators=150, learning_rate=0.05, num_leaves=15, min_child_samples=20,
                                      subsample=0.8, subsample_freq=1, colsample_bytree=0.9, reg_lambda=1.0,
                                      random_state=seed, deterministic=True, force_row_wise=True,
                                      n_jobs=1 if len(x) < LIGHTGBM_THREAD_ROWS else 2, verbose=-1)
        return PairModel(method, names, est.fit(x, y))
    if method == "mean":
        g_name, l_name = mean_cols
        cols = (g_name,) + ((l_name,) if l_name else ())
        gi = [names.index(c) for c in cols]
        g = fit_calibrator(x[:, gi[0]], y, "isotonic")
        loc = fit_calibrator(x[:, gi[1]], y, "isotonic") if l_name else None
        return PairModel(method, cols, (g, loc))
    raise ValueError(f"pairmodel.method={method!r}: choose auto or one of {', '.join(METHODS)}")


def reciprocal_ranks(p: np.ndarray, same: np.ndarray, query: np.ndarray) -> np.ndarray:
    """[queries with a true candidate] 1 / rank of each query's best true candidate by ``p`` (in query order).

    Tied candidates share their mean rank: a constant or coarse column must not borrow the candidates' order
    (the shortlist is sorted by cosine, so a tie broken by position would score cosine, not the column).
    """
    p, same, query = np.asarray(p, np.float64), np.asarray(same, bool), np.asarray(query)
    order = np.lexsort((-p, query))  # by query, then descending p
    q, s, v = query[order], same[order], p[order]
    new_q = np.r_[True, q[1:] != q[:-1]]
    new_run = new_q | np.r_[True, v[1:] != v[:-1]]
    pos = np.arange(len(q)) - np.maximum.accumulate(np.where(new_q, np.arange(len(q)), 0))  # place within query
    run = np.cumsum(new_run) - 1
    run_start = pos[new_run][run]
    run_len = np.bincount(run)[run]
    rank = run_start + (run_len - 1) / 2  # 0-based, ties averaged
    if not s.any():
        return np.zeros(0)
    return 1.0 / (1 + _min_by(q[s], rank[s]))


def mrr(p: np.ndarray, same: np.ndarray, query: np.ndarray) -> float:
    """Mean reciprocal rank of each query's best true candidate (``reciprocal_ranks``); NaN without one."""
    rr = reciprocal_ranks(p, same, query)
    return float(rr.mean()) if len(rr) else float("nan")


def _min_by(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The minimum of ``values`` per distinct key (in key order)."""
    _, inv = np.unique(keys, return_inverse=True)
    out = np.full(inv.max() + 1, np.inf)
    np.minimum.at(out, inv, values)
    return out


@dataclass
class PairFit:
    """A fitted pair model with its out-of-fold predictions and the cross-validation that chose it."""

    model: PairModel
    oof: np.ndarray  # [P] float32: each training pair's P from a model that never saw its pseudo-query's identity
    cv: dict[str, float]  # method -> cross-validated MRR
    n_pairs: int
    n_positive: int
    note: str = ""


def _one_blas_thread(fn):
    """``fn`` with BLAS on one thread: the pair model's matrices are narrow (pairs x about 10 columns), where a
    second BLAS thread's start and busy-wait cost more than it saves, most of all on a shared machine (a demo-sized
    logistic fit on 2 loaded cores: 64 ms with 2 BLAS threads, 8 ms with 1), and selection fits hundreds."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


@_one_blas_thread
def fit_pair_model(cols: dict[str, np.ndarray], names: tuple[str, ...], same: np.ndarray, query: np.ndarray,
                   group: np.ndarray, method: str = "auto", folds: int = 5, min_gain: float = 0.005,
                   seed: int = 0, max_pairs: int = 400_000, mean_cols: tuple[str, str | None] | None = None,
                   select: bool = True, group_b: np.ndarray | None = None, fit_mask: np.ndarray | None = None
                   ) -> PairFit:
    """Fit P(same) on labelled pairs: ``cols {name: [P]}``, ``same [P] bool``, ``query [P]`` (the pseudo-query
    of each pair, for MRR), ``group [P]`` (its identity: the folds). See the module docstring for ``method``.

    ``group_b [P]`` (the candidate photo's identity): a fold's model is then fitted only on pairs with NEITHER
    identity in that fold, so a pair's reverse never trains the model that predicts it. ``fit_mask [P] bool``:
    pairs that are predicted out-of-fold but never fitted on (the pretend-new rows, whose true identity is not
    among their candidates); all by default.

    With ``select`` the logistic's columns are chosen first by greedy forward selection on the same CV MRR
    (``select_features``); the other methods use the same columns (``mean`` its own two). Pairs beyond
    ``max_pairs`` are subsampled (negatives only: every positive is kept) to fit; predictions and out-of-fold
    values cover every pair.
    """
    same = np.asarray(same, bool)
    query, group = np.asarray(query), np.asarray(group)
    x = np.column_stack([np.asarray(cols[n], np.float64) for n in names])
    mean_cols = mean_cols or (names[0], None)
    fit_mask = np.ones(len(same), bool) if fit_mask is None else np.asarray(fit_mask, bool)
    fit_rows = np.flatnonzero(fit_mask)
    if len(fit_rows) > max_pairs:
        rng = np.random.default_rng(seed)
        neg = np.flatnonzero(~same & fit_mask)
        keep = rng.choice(neg, size=max(0, max_pairs - int(same.sum())), replace=False)
        fit_rows = np.sort(np.r_[np.flatnonzero(same & fit_mask), keep])
    methods = list(METHODS) if method == "auto" else [method]
    if method == "auto":
        methods = [m for m in methods if m != "mean" or mean_cols[1] is not None] or ["logistic"]
    fold = name_folds(group, folds, seed)  # all pairs of one group share a fold, drawn from its key alone
    if group_b is not None:  # the same key -> fold map for the candidate side
        both = name_folds(np.r_[np.asarray(group, dtype=str), np.asarray(group_b, dtype=str)], folds, seed)
        fold, fold_b = both[:len(same)], both[len(same):]
    else:
        fold_b = fold

    done: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # selection already scored the logistic's final columns

    def cv_of(m: str, use: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(per-query reciprocal ranks, out-of-fold P) of method ``m`` on columns ``use``; deterministic, so each
        (method, columns) is fitted once."""
        if (m, tuple(use)) not in done:
            done[m, tuple(use)] = _cv(m, tuple(use))
        return done[m, tuple(use)]

    def _cv(m: str, use: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        idx = [names.index(n) for n in use]
        oof = np.zeros(len(same), np.float32)
        for f in np.unique(fold):
            train, test = fit_rows[(fold[fit_rows] != f) & (fold_b[fit_rows] != f)], fold == f
            if len(train):
                oof[test] = _fit(m, use, x[np.ix_(train, idx)], same[train], seed, mean_cols).predict(
                    {n: x[test, i] for n, i in zip(use, idx)})
        return reciprocal_ranks(oof[fit_mask], same[fit_mask], query[fit_mask]), oof

    mean_use = tuple(c for c in mean_cols if c)
    used = select_features(names, lambda use: cv_of("logistic", use)[0], min_gain) if select else names
    oofs, cv = {}, {}
    for m in methods:
        rr, oofs[m] = cv_of(m, mean_use if m == "mean" else used)
        cv[m] = float(rr.mean()) if len(rr) else float("nan")
    best = methods[0]
    for m in methods[1:]:
        if np.isfinite(cv[m]) and (not np.isfinite(cv[best]) or cv[m] > cv[best] + min_gain):
            best = m
    use = mean_use if best == "mean" else used
    idx = [names.index(n) for n in use]
    model = _fit(best, use, x[np.ix_(fit_rows, idx)], same[fit_rows], seed, mean_cols)
    return PairFit(model, oofs[best], cv, int(len(same)), int(same.sum()))


def select_features(names: tuple[str, ...], score, min_gain: float, z: float = 1.0) -> tuple[str, ...]:
    """Greedy forward selection: start from the best single column, add the one that raises the mean of
    ``score(columns)`` (per-query reciprocal ranks, ``[queries]``) most, and stop when no column raises it by more
    than ``min_gain`` and ``z`` standard errors of the paired per-query difference. Columns that hurt
    identification are left out this way (on nyala a descriptor's rank beside its cosine lowered R-1 0.18 ->
    0.13), and so are ones that only repeat another or fit noise."""
    chosen: tuple[str, ...] = ()
    best: np.ndarray | None = None
    rest = list(names)
    while rest:
        trials = {n: score(chosen + (n,)) for n in rest}
        n = max(rest, key=lambda c: (float(np.mean(trials[c])) if len(trials[c]) else -np.inf, -rest.index(c)))
        if best is not None:
            diff = trials[n] - best
            if not len(diff):  # no pseudo-query with a true candidate: nothing to tell columns apart by
                break
            se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else np.inf
            if not diff.mean() > max(min_gain, z * se):
                break
        chosen, best = chosen + (n,), trials[n]
        rest.remove(n)
    return chosen
