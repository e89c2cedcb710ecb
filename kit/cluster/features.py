"""Pair features of test photos and the logistic pair model that turns them into P(same individual).

P(same individual) of two photos comes from a logistic model over pair features: their cosine (optionally
isotonic-calibrated first), the same cosine read against both photos' neighbourhoods (``csls``, ``rank``: a photo
close to everything is discounted), how much they both match one TRAIN identity (``via``: sum over identities X of
P(i is X) P(j is X), so two photos of opposite flanks still link through an individual whose both flanks are in
train), how confidently both are known at all (``both_known``; with ``via`` low that says "two different known
individuals"), opposite flanks, and optionally a local-feature score (a ``LocalFn``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix
from scipy.special import expit, logit

from ..calibration import fit_calibrator
from ..errors import ConfigError
from ..retrieve import identity_scores, similarity
from ..schema import flank


DIRECT_FEATURES = ("cos", "opposite", "cos_opposite")  # need no training identities


NEIGHBOUR_FEATURES = ("csls", "rank")  # with cluster.neighbours > 0


LINK_FEATURES = ("via", "both_known")  # need training identities


LOCAL_FEATURES = ("local", "local_missing")  # need a local_fn


HEAD_FEATURES = ("cos_head", "csls_head")  # need a metric head (cluster.head_feature)


# Known direction of a feature's effect on P(same): +1 more means same, -1 less; a fitted coefficient of the other
# sign (small held-out sets) drops the feature. Unlisted features may go either way.
SIGNS = {"cos": 1, "csls": 1, "rank": -1, "via": 1, "local": 1, "cos_head": 1, "csls_head": 1}


_EPS = 1e-4


# A local scorer: (frame of m images with filepath/orientation, their [m, D] embeddings) -> {column: [m, m] float32}
# local match scores (already log1p-scaled counts), NaN where a pair was not matched; "local" is the one the pair
# model reads by default. kit.pipeline builds one on the identification's pair stage when re-ranking is on.
LocalFn = Callable[[pd.DataFrame, np.ndarray], dict]


@dataclass
class TrainLinker:
    """Links test images through the TRAIN identities they match.

    ``p(i is X)`` = isotonic calibration of the best cosine between image i and identity X's train photos, fitted
    on held-out (pseudo-test image, pseudo-train identity) pairs. Only each image's ``topk`` identities are kept.
    """

    calibrator: object  # sklearn IsotonicRegression: best cosine to an identity -> P(image is that identity)
    topk: int = 3  # identities kept per image

    def memberships(self, emb: np.ndarray, emb_train: np.ndarray, train_labels: np.ndarray) -> csr_matrix:
        """``[M, I]`` sparse P(image i is train identity X), rows summing to at most 1."""
        _, id_scores = identity_scores(similarity(emb, emb_train), train_labels, "max")  # [M, I]
        k = min(self.topk, id_scores.shape[1])
        top = np.argpartition(-id_scores, k - 1, axis=1)[:, :k]  # [M, k]
        p = self.calibrator.predict(np.take_along_axis(id_scores, top, 1).ravel()).reshape(top.shape)
        p = p / np.maximum(1.0, p.sum(1, keepdims=True))  # an image is at most one identity
        rows = np.repeat(np.arange(len(emb)), k)
        return csr_matrix((p.ravel(), (rows, top.ravel())), shape=id_scores.shape)


def fit_linker(id_scores: np.ndarray, same: np.ndarray, topk: int = 3) -> TrainLinker | None:
    """A TrainLinker from labelled (image, identity) pairs: ``id_scores: [P]`` best cosine, ``same: [P] bool``.
    None when the pairs hold only one kind (no held-out image of a known identity, or no identity at all)."""
    same = np.asarray(same, bool)
    if same.all() or not same.any():
        return None
    return TrainLinker(fit_calibrator(id_scores, same, "isotonic"), topk)


def _linker_pairs(emb: np.ndarray, truth: np.ndarray, emb_train: np.ndarray, train_labels: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(best cosine [M * I], same [M * I]) for every (held-out image, pseudo-train identity)."""
    ids, id_scores = identity_scores(similarity(emb, emb_train), train_labels, "max")
    same = np.asarray(truth, dtype=object)[:, None] == ids[None, :]
    return id_scores.ravel(), same.ravel()


def neighbour_features(cos: np.ndarray, k: int, emb: np.ndarray | None = None,
                       emb_pool: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Features that read a pair's cosine against both photos' neighbourhoods (hubness correction).

    ``cos: [M, M]`` cosine among the photos; ``emb_pool: [N, D]`` optional extra photos (train) that join the
    neighbourhoods (with ``emb: [M, D]``). ``csls`` = cos - (r_i + r_j) / 2, r_i the mean cosine of photo i's ``k``
    nearest other photos (CSLS: a photo close to everything is discounted); ``rank`` = log1p of the larger of
    the two ranks (0 = nearest) of each photo in the other's list among the M photos (mutual-neighbour evidence).
    """
    m = len(cos)
    work = cos.copy()
    np.fill_diagonal(work, -np.inf)
    if emb_pool is not None and len(emb_pool):
        work = np.concatenate([work, np.asarray(emb, np.float32) @ np.asarray(emb_pool, np.float32).T], 1)
    kk = max(1, min(k, work.shape[1] - 1))
    r = -np.partition(-work, kk - 1, axis=1)[:, :kk].mean(1) if work.shape[1] > 1 else np.zeros(m, np.float32)
    r = np.where(np.isfinite(r), r, 0).astype(np.float32)
    csls = cos - (r[:, None] + r[None, :]) / 2
    order = np.argsort(-work[:, :m], axis=1, kind="stable")
    rank = np.empty((m, m), np.float32)
    np.put_along_axis(rank, order, np.arange(m, dtype=np.float32)[None, :].repeat(m, 0), 1)
    rank = np.log1p(np.maximum(rank, rank.T))
    np.fill_diagonal(rank, 0.0)
    return {"csls": csls.astype(np.float32), "rank": rank}


def pair_features(emb: np.ndarray, orientation=None, *, memberships: csr_matrix | None = None,
                  local: np.ndarray | None = None, neighbours: int = 0,
                  emb_pool: np.ndarray | None = None, emb_head: np.ndarray | None = None,
                  head_pool: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Pair features of M images, each ``[M, M] float32`` and symmetric.

    ``emb: [M, D]`` L2-normalised; ``orientation: [M]`` (None = unknown); ``memberships: [M, I]`` from
    TrainLinker.memberships (adds ``via``, ``both_known``); ``local: {name: [M, M]}`` a LocalFn's columns, NaN = not
    matched (each added under its name, 0 where missing, and ``local_missing`` from the first); ``neighbours > 0`` adds
    ``csls`` and ``rank`` (neighbour_features; ``emb_pool: [N, D]`` train photos join the neighbourhoods).
    ``emb_head: [M, d]`` the photos in a metric head's space (kit/head.py) adds ``cos_head`` and ``csls_head`` (its
    neighbourhoods of ``max(neighbours, 5)`` among the photos and ``head_pool: [N, d]``, the train photos there).
    """
    emb = np.ascontiguousarray(emb, np.float32)
    m = len(emb)
    feats = {"cos": emb @ emb.T}
    if neighbours > 0:
        feats.update(neighbour_features(feats["cos"], neighbours, emb, emb_pool))
    side = flank(orientation) if orientation is not None else np.zeros(m, np.int8)
    opp = ((side[:, None] > 0) & (side[None, :] > 0) & (side[:, None] != side[None, :])).astype(np.float32)
    feats["opposite"] = opp
    feats["cos_opposite"] = feats["cos"] * opp
    if memberships is not None:
        feats["via"] = np.minimum(1.0, (memberships @ memberships.T).toarray()).astype(np.float32)
        known = np.minimum(1.0, np.asarray(memberships.sum(1)).ravel()).astype(np.float32)
        feats["both_known"] = np.outer(known, known)
    for i, (name, x) in enumerate((local or {}).items()):
        x = np.asarray(x, np.float32)
        if x.shape != (m, m):
            raise ValueError(f"local scores {name!r} must be [{m}, {m}], got {x.shape}")
        missing = ~np.isfinite(x)
        feats[name] = np.where(missing, 0.0, x).astype(np.float32)
        if i == 0:
            feats["local_missing"] = missing.astype(np.float32)
    if emb_head is not None:
        z = np.ascontiguousarray(emb_head, np.float32)
        feats["cos_head"] = z @ z.T
        feats["csls_head"] = neighbour_features(feats["cos_head"], max(neighbours, 5), z, head_pool)["csls"]
    return feats


@dataclass
class PairModel:
    """P(same individual) = sigmoid(w . standardised features + b), fitted on held-out labelled pairs.

    With ``cos_calibrator`` (isotonic), the cosine enters as the logit of its calibrated probability.
    """

    features: tuple[str, ...]  # names of the pair features, in coefficient order
    mean: np.ndarray  # [F] feature means of the fitting pairs
    scale: np.ndarray  # [F] feature standard deviations (1 where constant)
    coef: np.ndarray  # [F] logistic coefficients on standardised features
    intercept: float
    cos_calibrator: object | None = None  # isotonic cosine -> P(same), or None (raw cosine)

    def _column(self, feats: dict, name: str) -> np.ndarray:
        x = feats[name]
        if name == "cos" and self.cos_calibrator is not None:
            p = self.cos_calibrator.predict(x.ravel().astype(np.float64)).reshape(x.shape)
            x = logit(np.clip(p, _EPS, 1 - _EPS)) + 1e-3 * x  # the small cosine term breaks isotonic ties
        return x

    def predict(self, feats: dict[str, np.ndarray], shift: float = 0.0, square: bool = True) -> np.ndarray:
        """``[M, M] float32`` P(same individual) from ``pair_features`` output (diagonal set to 1); ``shift`` is
        added to the logit (a prior correction). ``square=False``: any shape of rows, the diagonal left as is."""
        z = None
        for f, name in enumerate(self.features):
            weight = np.float32(self.coef[f] / self.scale[f])
            term = (self._column(feats, name).astype(np.float32) - self.mean[f]) * weight
            z = term if z is None else z + term
        prob = expit(z + np.float32(self.intercept + shift)).astype(np.float32)
        if square:
            np.fill_diagonal(prob, 1.0)
        return prob

    def describe(self) -> dict[str, float]:
        """{feature: coefficient on the standardised feature, "intercept": b} (for reports)."""
        return {**{n: float(c) for n, c in zip(self.features, self.coef)}, "intercept": float(self.intercept)}


@dataclass
class SharedPairModel:
    """The identification's pair model (kit/pairmodel.py, fitted by ``fit_shared_pair_model``) over the clustering's
    dense pair features: one pair model for both tasks (cluster.pair_model=shared)."""

    model: object  # kit.pairmodel.PairModel over flat columns
    features: tuple[str, ...]  # the columns it reads (those column selection kept)
    rows_per_chunk: int = 256  # rows of the [M, M] matrices predicted at once (bounds the flat copies' memory)

    def predict(self, feats: dict[str, np.ndarray], shift: float = 0.0) -> np.ndarray:
        """``[M, M] float32`` P(same individual), symmetric, diagonal 1 (``shift`` is not supported: 0 only)."""
        if shift:
            raise ValueError("SharedPairModel.predict: shift is not supported")
        m = len(feats[self.features[0]])
        prob = np.empty((m, m), np.float32)
        for r0 in range(0, m, self.rows_per_chunk):
            r1 = min(m, r0 + self.rows_per_chunk)
            prob[r0:r1] = self.model.predict({n: feats[n][r0:r1].ravel() for n in self.features}).reshape(r1 - r0, m)
        prob = (prob + prob.T) / 2  # features are symmetric; lightgbm's float sums may differ in the last bit
        np.fill_diagonal(prob, 1.0)
        return prob

    def describe(self) -> dict:
        return self.model.describe()


def fit_shared_pair_model(folds: list[dict], features: tuple[str, ...], pc: dict, max_pairs: int,
                          symmetric: bool = True) -> tuple[SharedPairModel, list[np.ndarray]]:
    """Fit the identification's pair model (kit/pairmodel.py ``fit_pair_model`` with the ``pairmodel`` section
    ``pc``: method, column selection, identity-grouped CV) on every ordered pair of the held-out folds
    (``{"feats": {name: [m, m]}, "truth": [m], "keys": [m]}`` each; ``keys`` the identities' ``splits.anchors``).

    Returns (the model fitted on all pairs, per fold ``[m, m] float32`` OUT-OF-FOLD P(same)): a pair's P comes from
    a model that never fitted a pair of its row photo's identity, so the cut is chosen on P the way the test's will
    be (as the own model's is with cluster.cut_on=out-of-fold). ``symmetric=False`` keeps each direction's own
    out-of-fold P (``[i, j]`` from the models that never fitted i's identity); by default the two are averaged.
    Raises ValueError without both kinds of pair.
    """
    from ..pairmodel import fit_pair_model as fit_pairs

    cols: dict[str, list] = {n: [] for n in features}
    same, query, group, group_b, shapes = [], [], [], [], []
    offset = 0
    for fold in folds:
        t, keys = np.asarray(fold["truth"], dtype=object), np.asarray(fold["keys"], dtype=str)
        m = len(t)
        r, c = np.nonzero(~np.eye(m, dtype=bool))
        for n in features:
            cols[n].append(np.asarray(fold["feats"][n], np.float32)[r, c])
        same.append(t[r] == t[c])
        query.append(offset + r)  # each pseudo-test photo ranks its own pairs (MRR)
        group.append(keys[r])
        group_b.append(keys[c])
        shapes.append((m, r, c))
        offset += m
    y = np.concatenate(same).astype(bool) if same else np.zeros(0, bool)
    if y.all() or not y.any():
        raise ValueError("held-out folds need both same-individual and different pairs to fit the pair model")
    fit = fit_pairs({n: np.concatenate(v) for n, v in cols.items()}, features, y, np.concatenate(query),
                    np.concatenate(group), pc["method"], int(pc["cv_folds"]), float(pc["min_gain"]),
                    int(pc["seed"]), max_pairs, select=pc["features"] == "auto", group_b=np.concatenate(group_b))
    probs, start = [], 0
    for m, r, c in shapes:
        p = np.ones((m, m), np.float32)
        p[r, c] = fit.oof[start:start + len(r)]
        start += len(r)
        probs.append((p + p.T) / 2 if symmetric else p)  # the directions come from the two identities' folds
    return SharedPairModel(fit.model, tuple(fit.model.names)), probs


@dataclass
class MeanPairModel:
    """The mean P(same) of several PairModels over the same features: the test scored by the out-of-fold group
    models the cut was chosen with (cluster.cut_on=out-of-fold), so that cut and test read P from models of the same
    kind (each fitted on 4/5 of the identities; a held-out pair's P averages one or two of them, the test's all)."""

    models: list  # PairModel each
    full: PairModel  # fitted on all held-out pairs: what describe() reports

    @property
    def features(self) -> tuple[str, ...]:
        return self.full.features

    def predict(self, feats: dict[str, np.ndarray], shift: float = 0.0) -> np.ndarray:
        prob = sum(m.predict(feats, shift) for m in self.models) / np.float32(len(self.models))
        return prob.astype(np.float32)

    def describe(self) -> dict[str, float]:
        return self.full.describe()


def out_of_fold(folds: list[dict], features: tuple[str, ...], calibration: str, max_pairs: int, seed: int,
                groups: int = 5, symmetric: bool = True, models: list | None = None,
                full: PairModel | None = None) -> list[np.ndarray]:
    """Per held-out fold, ``[m, m] float32`` P(same) of the own pair model, each direction of a pair from a model
    that never fitted a pair of its row photo's identity: the cut is then chosen on P the way the test's will be.

    ``folds``: ``{"feats": {name: [m, m]}, "truth": [m], "keys": [m]}`` (``keys``: identity keys, ``splits.anchors``;
    the same identity shares a key across folds). The identities are dealt into ``groups`` (``splits.name_folds``);
    group g's model is fitted on the pairs of the photos of the other groups only, and gives ``[i, j]`` for every row
    photo i of group g; the two directions are averaged (``symmetric=False`` keeps each row's own). A group whose
    complement holds no pair of both kinds keeps the model of all pairs (``full``, fitted here when not given) for
    its rows. ``models``: a list the group models are appended to (for MeanPairModel).
    """
    from ..splits import name_folds

    keys = np.concatenate([np.asarray(f["keys"], dtype=str) for f in folds])
    group_of = dict(zip(keys, name_folds(keys, groups, seed)))
    row_groups = [np.array([group_of[k] for k in np.asarray(f["keys"], dtype=str)]) for f in folds]
    if full is None:
        full = fit_pair_model(folds, features, calibration, max_pairs, seed)
    probs = [np.ones((len(f["truth"]), len(f["truth"])), np.float32) for f in folds]
    for g in sorted(set(group_of.values())):
        rest = []
        for f, rg in zip(folds, row_groups):
            keep = np.flatnonzero(rg != g)
            rest.append({"feats": {n: f["feats"][n][np.ix_(keep, keep)] for n in features},
                         "truth": np.asarray(f["truth"], dtype=object)[keep]})
        try:
            pm = fit_pair_model(rest, features, calibration, max_pairs, seed)
        except ValueError:
            pm = full
        if models is not None:
            models.append(pm)
        for f, rg, p in zip(folds, row_groups, probs):
            rows = rg == g
            if rows.any():
                p[rows] = pm.predict({n: f["feats"][n][rows] for n in features}, square=False)
    out = []
    for p in probs:
        p = ((p + p.T) / 2).astype(np.float32) if symmetric else p
        np.fill_diagonal(p, 1.0)
        out.append(p)
    return out


def _upper(x: np.ndarray) -> np.ndarray:
    return x[np.triu_indices(len(x), 1)]


def fit_pair_model(folds: list[dict], features: tuple[str, ...], calibration: str = "logistic",
                   max_pairs: int = 2_000_000, seed: int = 0) -> PairModel:
    """Fit a PairModel on the pairs of held-out folds (``{"feats": {name: [m, m]}, "truth": [m]}`` each).

    Pairs are sampled uniformly down to ``max_pairs`` (keeping the share of same-individual pairs).
    Raises ValueError when the folds hold no same-individual pair or no different pair.
    """
    from sklearn.linear_model import LogisticRegression

    if calibration not in ("logistic", "isotonic"):
        raise ConfigError(f"cluster.calibration={calibration!r}: choose logistic or isotonic")
    cols = {n: [] for n in features}
    same = []
    for fold in folds:
        t = np.asarray(fold["truth"], dtype=object)
        same.append(_upper(t[:, None] == t[None, :]))
        for n in features:
            cols[n].append(_upper(fold["feats"][n]))
    y = np.concatenate(same) if same else np.zeros(0, bool)
    if y.all() or not y.any():
        raise ValueError("held-out folds need both same-individual and different pairs to fit the pair model")
    keep = np.arange(len(y))
    if len(y) > max_pairs:
        keep = np.sort(np.random.default_rng(seed).choice(len(y), max_pairs, replace=False))
    y = y[keep]
    x = np.stack([np.concatenate(cols[n])[keep] for n in features], 1).astype(np.float64)  # [P, F]
    cos_cal = None
    if calibration == "isotonic":
        c = features.index("cos")
        cos_cal = fit_calibrator(x[:, c], y, "isotonic")
        x[:, c] = logit(np.clip(cos_cal.predict(x[:, c]), _EPS, 1 - _EPS)) + 1e-3 * x[:, c]
    mean, scale = x.mean(0), x.std(0)
    scale[scale < 1e-12] = 1.0
    z = (x - mean) / scale
    active = np.ones(len(features), bool)
    while True:  # a feature whose coefficient comes out against its known direction is noise here: drop, refit
        lr = LogisticRegression(C=1.0, max_iter=1000).fit(z[:, active], y)
        coef = np.zeros(len(features))
        coef[active] = lr.coef_[0]
        wrong = [f for f, n in enumerate(features) if active[f] and SIGNS.get(n, 0) * coef[f] < 0]
        if not wrong:
            break
        active[wrong] = False
        if not active.any():  # nothing left with the right sign: a constant model (P = share of same pairs)
            coef = np.zeros(len(features))
            lr = None
            break
    intercept = float(lr.intercept_[0]) if lr is not None else float(logit(np.clip(y.mean(), _EPS, 1 - _EPS)))
    return PairModel(tuple(features), mean.astype(np.float32), scale.astype(np.float32), coef, intercept, cos_cal)
