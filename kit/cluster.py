"""AnimalCLEF 2026: cluster the test images of each dataset into individuals.

The stage, per dataset, in the order a run uses it (``cluster_competition`` does all of it)::

    folds = heldout_folds(train, emb_train, conf)           # pseudo-test sets cut from TRAIN identities
    model = fit_cluster_model(folds, conf, prior)           # train linker, pair model, method + cut (held-out ARI)
    labels, prob = predict_clusters(model, emb_test, orientation, emb_train=..., train_labels=...)
        # inside: pair_features -> {name: [M, M]}, model.pair_model.predict -> [M, M] P(same individual),
        #         cluster_matrix(prob, method, cut, edge_cut) -> [M] int64

P(same individual) of two test photos comes from a logistic model over pair features: their cosine (optionally
isotonic-calibrated first), the same cosine read against both photos' neighbourhoods (``csls``, ``rank``: a photo
close to everything is discounted), how much they both match one TRAIN identity (``via``: sum over identities X of
P(i is X) P(j is X), so two photos of opposite flanks still link through an individual whose both flanks are in
train), how confidently both are known at all (``both_known``; with ``via`` low that says "two different known
individuals"), opposite flanks, and optionally a local-feature score (LightGlue, through a ``LocalFn``). Anything
that yields a symmetric ``[M, M]`` probability matrix can be clustered: ``cluster_matrix`` does not care where it
came from (e.g. kit.rerank's fused probabilities).

Methods (``cluster.method``): agglomerative clustering on 1 - P with ``average`` or ``complete`` linkage, cut where
the linkage P falls below ``cut``; or ``components``: connected components of the pairs with P >= ``edge_cut``, each
then split by average linkage at ``cut``. ``auto`` keeps whichever scores the best held-out ARI. Everything is
fitted on held-out splits of the TRAIN identities (splits.open_set_split: whole identities hidden, as the test's new
individuals are, plus some photos of the others), never on test photos. A dataset with few held-out photos leans
on the other datasets' pooled ARI curves to choose its cut. A dataset without training identities
(TexasHornedLizards) borrows a pair model, method and cut fitted on the other datasets, and says so.

Measured on nyala (bench/cluster.py, 575 test photos of 178 individuals, tf_efficientnet_lite0 embeddings): ARI
0.047, against 0.028 for average linkage on cosine and 0.012 for connected components on cosine, both at their best
threshold in hindsight. Clustering 10k photos from their [M, M] scores takes 2 to 6 s on 2 CPU cores.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import linkage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.special import expit, logit

from .calibration import fit_calibrator
from .errors import ConfigError, DataError
from .schema import cluster_label, flank
from .splits import open_set_split

METHODS = ("average", "complete", "components")  # what method="auto" chooses among (average first: the default)
LINKAGES = ("average", "complete", "single")  # scipy linkages cluster_matrix accepts ("single" = plain components)
CUT_GRID = expit(np.arange(-7.0, 7.01, 0.25))  # candidate P(same) cuts, evenly spaced in logit: 0.0009 .. 0.9991
DIRECT_FEATURES = ("cos", "opposite", "cos_opposite")  # need no training identities
NEIGHBOUR_FEATURES = ("csls", "rank")  # with cluster.neighbours > 0
LINK_FEATURES = ("via", "both_known")  # need training identities
LOCAL_FEATURES = ("local", "local_missing")  # need a local_fn
# Known direction of a feature's effect on P(same): +1 more means same, -1 less; a fitted coefficient of the other
# sign (small held-out sets) drops the feature. Unlisted features may go either way.
SIGNS = {"cos": 1, "csls": 1, "rank": -1, "via": 1, "local": 1}
AUTO_MARGIN = 0.01  # method="auto": another method replaces average linkage only with a held-out ARI this much higher
_EPS = 1e-4

# A local scorer: (frame of m images with filepath/orientation, their [m, D] embeddings) -> [m, m] float32 local
# match score, NaN where a pair was not matched. ``rerank_pair_scores`` builds one from kit.rerank.
LocalFn = Callable[[pd.DataFrame, np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------------------------------------------
# Clustering a probability matrix


def _check_prob(prob: np.ndarray) -> np.ndarray:
    prob = np.asarray(prob, np.float32)
    if prob.ndim != 2 or prob.shape[0] != prob.shape[1]:
        raise ValueError(f"pairwise probabilities must be a square [M, M] matrix, got shape {prob.shape}")
    if not np.isfinite(prob).all():
        raise ValueError("pairwise probabilities contain NaN or inf; give every pair a score")
    return prob


def _first_seen(labels: np.ndarray) -> np.ndarray:
    """Renumber cluster labels 0, 1, ... in order of first appearance (deterministic names)."""
    _, first, inv = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inv.ravel()]


def _condensed_distance(prob: np.ndarray) -> np.ndarray:
    """[M (M-1) / 2] float64 condensed 1 - P (scipy's order), symmetrised by the mean of P and P.T.

    Filled row by row: no [M, M] float64 temporaries (10k photos: 400 MB in all, not 2 GB).
    """
    m = len(prob)
    out = np.empty(m * (m - 1) // 2, np.float64)
    start = 0
    for i in range(m - 1):
        row = (prob[i, i + 1:].astype(np.float64) + prob[i + 1:, i]) / 2
        out[start:start + len(row)] = 1.0 - row
        start += len(row)
    return np.clip(out, 0.0, 1.0, out=out)


def linkage_tree(prob: np.ndarray, method: str = "average") -> np.ndarray:
    """scipy linkage matrix ``Z: [M - 1, 4] float64`` of agglomerative clustering on 1 - P.

    ``prob: [M, M] float32`` P(same individual), symmetric (it is symmetrised anyway), M >= 2.
    """
    if method not in LINKAGES:
        raise ConfigError(f"cluster linkage {method!r}: choose one of {', '.join(LINKAGES)}")
    return linkage(_condensed_distance(prob), method=method)


def cut_tree(tree: np.ndarray, cut: float) -> np.ndarray:
    """[M] int64 labels: merges whose linkage P(same) is >= ``cut`` (distance <= 1 - cut) are kept.

    The same partition as scipy's ``fcluster(tree, 1 - cut, "distance")`` for the monotone linkages used here
    (average, complete, single), without its per-call tree validation, which dominates a scan over many cuts.
    """
    m = len(tree) + 1
    keep = np.flatnonzero(tree[:, 2] <= 1.0 - float(cut))
    label = np.arange(2 * m - 1)
    children = tree[:, :2].astype(np.int64)
    for r in keep[::-1]:  # a merge row's parent merge comes later in Z: top-down, each child takes its root's label
        label[children[r]] = label[m + r]
    return np.unique(label[:m], return_inverse=True)[1].ravel().astype(np.int64)


def _components(prob: np.ndarray, edge_cut: float) -> np.ndarray:
    """[M] int64 connected-component label of the graph whose edges are the pairs with P >= edge_cut."""
    adj = csr_matrix(np.maximum(prob, prob.T) >= edge_cut)
    return connected_components(adj, directed=False)[1].astype(np.int64)


def _split_components(prob: np.ndarray, comp: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """[C, M] int64: each component split by average linkage at each of ``cuts``."""
    out = np.zeros((len(cuts), len(comp)), np.int64)
    order = np.argsort(comp, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(comp[order]) != 0, True])
    offset = 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        members = order[a:b]
        if len(members) == 1:
            out[:, members[0]] = offset
            offset += 1
            continue
        tree = linkage_tree(prob[np.ix_(members, members)], "average")
        width = len(members)
        for c, cut in enumerate(cuts):
            out[c, members] = offset + cut_tree(tree, cut)
        offset += width
    return out


def cluster_matrix(prob: np.ndarray, method: str = "average", cut: float = 0.5,
                   edge_cut: float | None = None) -> np.ndarray:
    """Cluster M images from their pairwise P(same individual).

    ``prob: [M, M] float32`` in [0, 1], symmetric (the mean of P and P.T is used). ``method``: "average" |
    "complete" | "single" (agglomerative on 1 - P, kept merges have linkage P >= ``cut``) or "components" (edges
    P >= ``edge_cut``, each connected component then split by average linkage at ``cut``).
    Returns ``labels: [M] int64``, numbered 0, 1, ... in order of first appearance.
    """
    prob = _check_prob(prob)
    m = len(prob)
    if m == 0:
        return np.zeros(0, np.int64)
    if m == 1:
        return np.zeros(1, np.int64)
    if method == "components":
        if edge_cut is None:
            raise ValueError("method='components' needs edge_cut")
        labels = _split_components(prob, _components(prob, edge_cut), np.array([cut]))[0]
    else:
        labels = cut_tree(linkage_tree(prob, method), cut)
    return _first_seen(labels)


def ari(truth, pred) -> float:
    """Adjusted Rand index, equal to sklearn's adjusted_rand_score (incl. its 1.0 for identical trivial
    partitions) without its per-call input validation, which dominates the cost of scanning many cuts.

    ``truth, pred: [M]`` labels of any hashable type.
    """
    a = np.unique(np.asarray(truth), return_inverse=True)[1].ravel()
    b = np.unique(np.asarray(pred), return_inverse=True)[1].ravel()
    n = len(a)
    if n < 2:
        return 1.0
    comb = lambda c: float((c * (c - 1)).sum()) / 2  # noqa: E731 - pairs within each cell
    index = comb(np.bincount(a * (b.max() + 1) + b).astype(np.float64))
    sa, sb = comb(np.bincount(a).astype(np.float64)), comb(np.bincount(b).astype(np.float64))
    expected = sa * sb / (n * (n - 1) / 2)
    top = (sa + sb) / 2
    if top == expected:  # both partitions all-singletons, or both one cluster: identical
        return 1.0
    return (index - expected) / (top - expected)


def ari_curve(prob: np.ndarray, truth: np.ndarray, method: str, cuts: np.ndarray = CUT_GRID,
              edge_cuts: np.ndarray | None = None) -> np.ndarray:
    """Adjusted Rand index of ``cluster_matrix(prob, method, cut)`` against ``truth: [M]`` for every cut.

    Returns ``[C] float64`` (one per ``cuts``), or for "components" ``[E, C]`` (rows: ``edge_cuts``, default
    ``cuts``); a split cut above its edge cut would give plain average linkage, so those cells are NaN.
    The tree is built once per method (per edge cut for components), so a curve costs little more than one run.
    """
    prob = _check_prob(prob)
    truth = np.asarray(truth)
    if len(truth) != len(prob):
        raise ValueError(f"truth has {len(truth)} labels for a {prob.shape} matrix")
    if method == "components":
        edge_cuts = cuts if edge_cuts is None else edge_cuts
        out = np.full((len(edge_cuts), len(cuts)), np.nan)
        for e, edge in enumerate(edge_cuts):
            ok = cuts <= edge + 1e-12
            if ok.any():
                labels = _split_components(prob, _components(prob, edge), cuts[ok])
                out[e, ok] = [ari(truth, lab) for lab in labels]
        return out
    if len(prob) < 2:
        return np.ones(len(cuts))
    tree = linkage_tree(prob, method)
    return np.array([ari(truth, cut_tree(tree, c)) for c in cuts])


def naive_baselines(cos: np.ndarray, truth: np.ndarray, grid: np.ndarray | None = None) -> dict[str, dict]:
    """Hindsight baselines on raw cosine (the answer key picks their threshold; for benchmarks only).

    ``cos: [M, M] float32`` cosine, ``truth: [M]``. Returns {name: {"ARI", "threshold"}} for
    "cosine_components" (pairs with cosine >= t linked, connected components) and "cosine_average" (average
    linkage on 1 - cosine), each at its best threshold t in hindsight.
    """
    grid = np.linspace(-0.2, 1.0, 121) if grid is None else grid
    cos = np.clip(np.asarray(cos, np.float32), -1, 1)
    scaled = (cos + 1) / 2  # monotone map into [0, 1] so the matrix clusters like a probability
    out = {}
    for name, method in [("cosine_components", "single"), ("cosine_average", "average")]:
        curve = ari_curve(scaled, truth, method, (grid + 1) / 2)
        best = int(np.nanargmax(curve))
        out[name] = {"ARI": float(curve[best]), "threshold": float(grid[best])}
    return out


# ---------------------------------------------------------------------------------------------------------------
# Pair features


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
        from .retrieve import identity_scores, similarity

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
    from .retrieve import identity_scores, similarity

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
                  emb_pool: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Pair features of M images, each ``[M, M] float32`` and symmetric.

    ``emb: [M, D]`` L2-normalised; ``orientation: [M]`` (None = unknown); ``memberships: [M, I]`` from
    TrainLinker.memberships (adds ``via``, ``both_known``); ``local: [M, M]`` local scores, NaN = not matched
    (adds ``local`` = log1p(score), 0 where missing, and ``local_missing``); ``neighbours > 0`` adds
    ``csls`` and ``rank`` (neighbour_features; ``emb_pool: [N, D]`` train photos join the neighbourhoods).
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
    if local is not None:
        local = np.asarray(local, np.float32)
        if local.shape != (m, m):
            raise ValueError(f"local scores must be [{m}, {m}], got {local.shape}")
        missing = ~np.isfinite(local)
        feats["local"] = np.where(missing, 0.0, np.log1p(np.maximum(local, 0))).astype(np.float32)
        feats["local_missing"] = missing.astype(np.float32)
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

    def predict(self, feats: dict[str, np.ndarray], shift: float = 0.0) -> np.ndarray:
        """``[M, M] float32`` P(same individual) from ``pair_features`` output (diagonal set to 1); ``shift`` is
        added to the logit (a prior correction)."""
        z = None
        for f, name in enumerate(self.features):
            weight = np.float32(self.coef[f] / self.scale[f])
            term = (self._column(feats, name).astype(np.float32) - self.mean[f]) * weight
            z = term if z is None else z + term
        prob = expit(z + np.float32(self.intercept + shift)).astype(np.float32)
        np.fill_diagonal(prob, 1.0)
        return prob

    def describe(self) -> dict[str, float]:
        """{feature: coefficient on the standardised feature, "intercept": b} (for reports)."""
        return {**{n: float(c) for n, c in zip(self.features, self.coef)}, "intercept": float(self.intercept)}


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


# ---------------------------------------------------------------------------------------------------------------
# Held-out folds, model selection


def _orientation(frame: pd.DataFrame):
    return frame["orientation"].to_numpy() if "orientation" in frame.columns else None


def heldout_folds(train: pd.DataFrame, emb_train: np.ndarray, conf: dict, local_fn: LocalFn | None = None
                  ) -> list[dict]:
    """Pseudo-test sets cut from one dataset's TRAIN rows, each clustered as the test will be.

    ``train``: rows with ``identity`` (one dataset); ``emb_train: [N, D]``. Fold f is
    ``open_set_split(unknown_fraction=heldout_unknown_fraction, query_fraction=heldout_query_fraction, seed=seed+f)``:
    its queries (hidden identities' photos and some photos of the others) are the pseudo-test, its database the
    pseudo-train. Returns a list of {"emb", "truth", "orientation", "local", "emb_gallery", "gallery_labels"};
    folds whose pseudo-test has no two photos of one individual are dropped (they cannot rank cuts).
    """
    cc = conf["cluster"]
    frame = train.reset_index(drop=True).assign(_row=np.arange(len(train)))
    folds = []
    for f in range(int(cc["heldout_folds"])):
        split = open_set_split(frame, unknown_fraction=cc["heldout_unknown_fraction"],
                               query_fraction=cc["heldout_query_fraction"], seed=int(cc["seed"]) + f)
        test = split[split["split"] == "query"]
        gal = split[split["split"] == "database"]
        if len(test) < 2 or not test["identity"].duplicated().any():
            continue
        emb_t = emb_train[test["_row"].to_numpy()]
        folds.append({
            "emb": emb_t, "truth": test["identity"].to_numpy(dtype=object), "orientation": _orientation(test),
            "local": local_fn(test, emb_t) if local_fn is not None else None,
            "emb_gallery": emb_train[gal["_row"].to_numpy()], "gallery_labels": gal["identity"].to_numpy(dtype=object),
        })
    return folds


@dataclass
class ClusterModel:
    """Everything fitted for one dataset: how to score pairs, and how to cut."""

    pair_model: PairModel
    method: str  # "average" | "complete" | "components"
    cut: float  # P(same) a merge needs
    edge_cut: float | None  # components only: P(same) an edge needs
    linker: TrainLinker | None  # None: no train links (disabled, no train, or nothing to calibrate)
    heldout: dict = field(default_factory=dict)  # {method: mean held-out ARI at its best cut}
    note: str = ""  # how the model was obtained when it is not the dataset's own (fallback)
    neighbours: int = 0  # k of the neighbour features (csls, rank); 0 = none
    train_pool: bool = False  # train photos join the neighbourhoods (as they did when the model was fitted)

    def details(self) -> dict:
        return {"method": self.method, "cut": self.cut, "edge_cut": self.edge_cut,
                "heldout_ARI": self.heldout.get(self.method, float("nan")), "heldout_by_method": dict(self.heldout),
                "train_links": self.linker is not None, "pair_model": self.pair_model.describe(),
                **({"note": self.note} if self.note else {})}


def _feature_names(links: bool, local: bool, neighbours: int) -> tuple[str, ...]:
    return (DIRECT_FEATURES + (NEIGHBOUR_FEATURES if neighbours > 0 else ()) + (LINK_FEATURES if links else ())
            + (LOCAL_FEATURES if local else ()))


def _methods(conf: dict) -> list[str]:
    method = conf["cluster"]["method"]
    if method == "auto":
        return list(METHODS)
    if method not in METHODS + ("single",):
        raise ConfigError(f"cluster.method={method!r}: choose auto, {', '.join(METHODS)} or single")
    return [method]


def method_curves(probs: list[np.ndarray], truths: list[np.ndarray], conf: dict) -> dict[str, dict]:
    """Mean held-out ARI over folds for every method and cut: {method: {"cuts": [C], "edges": [E] | None,
    "ari": [C] or [E, C] (components; NaN where the cut exceeds the edge cut)}}. Fixed cut/edge_cut in the config
    leave a grid of one."""
    cc = conf["cluster"]
    cuts = CUT_GRID if cc["cut"] == "auto" else np.array([float(cc["cut"])])
    out = {}
    for method in _methods(conf):
        edges = None
        if method == "components":
            edges = CUT_GRID[::2] if cc["edge_cut"] == "auto" else np.array([float(cc["edge_cut"])])  # coarser
        curves = [ari_curve(p, t, method, cuts, edges) for p, t in zip(probs, truths)]
        out[method] = {"cuts": cuts, "edges": edges, "ari": np.mean(np.stack(curves), 0)}  # same NaN cells per fold
    return out


def pooled_curves(curves_by_dataset: dict[str, dict], weights: dict[str, float]) -> dict[str, dict]:
    """Weighted mean of several datasets' method_curves (weights: their held-out photo counts)."""
    names = [n for n in curves_by_dataset if weights.get(n, 0) > 0]
    if not names:
        return {}
    total = sum(weights[n] for n in names)
    out = {}
    for method, first in curves_by_dataset[names[0]].items():
        ari = sum(weights[n] * curves_by_dataset[n][method]["ari"] for n in names) / total
        out[method] = {**first, "ari": ari}
    return out


def choose_cut(curves: dict[str, dict], prior: dict[str, dict] | None = None, weight: float = 1.0
               ) -> tuple[str, float, float | None, dict]:
    """(method, cut, edge_cut, {method: held-out ARI}) maximising held-out ARI.

    With ``prior`` (pooled curves of other datasets) the curve used is ``weight * own + (1 - weight) * prior``:
    a dataset with few held-out photos leans on the pooled evidence. A 1-D curve is smoothed over neighbouring cuts
    (3-point mean) before its argmax, so the cut sits in a good plateau, not on a lucky spike. method "auto":
    average linkage is kept unless another method is better by AUTO_MARGIN. The reported ARI is the dataset's own.
    """
    best, scores = None, {}
    for method, cv in curves.items():
        mix = cv["ari"] if not prior else weight * cv["ari"] + (1 - weight) * prior[method]["ari"]
        if method == "components":
            filled = np.where(np.isnan(mix), -np.inf, mix)
            e, c = np.unravel_index(np.argmax(filled), filled.shape)
            cut, edge, own = float(cv["cuts"][c]), float(cv["edges"][e]), float(cv["ari"][e, c])
        else:
            padded = np.r_[mix[0], mix, mix[-1]]
            c = int(np.argmax((padded[:-2] + padded[1:-1] + padded[2:]) / 3))
            cut, edge, own = float(cv["cuts"][c]), None, float(cv["ari"][c])
        used = float(mix[e, c]) if method == "components" else float(mix[c])
        scores[method] = own
        if best is None or used > best[4] + (AUTO_MARGIN if best[0] == "average" else 1e-12):
            best = (method, cut, edge, own, used)
    return best[0], best[1], best[2], scores


@dataclass
class _Stage:
    """A dataset's fitted pair model with its held-out curves, before method and cut are chosen."""

    model: ClusterModel
    curves: dict
    n_photos: int  # pseudo-test photos over all folds (the weight of its own evidence)


def _fit_stage(folds: list[dict], conf: dict, links: bool = True, pool: bool = True, note: str = "") -> _Stage:
    cc = conf["cluster"]
    if not folds:
        raise ValueError("no held-out fold with two photos of one individual")
    k = int(cc["neighbours"])
    linker = None
    if links and cc["train_links"]:
        pairs = [_linker_pairs(f["emb"], f["truth"], f["emb_gallery"], f["gallery_labels"])
                 for f in folds if len(f["gallery_labels"])]
        if pairs:
            linker = fit_linker(np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs]),
                                int(cc["link_topk"]))
    has_local = all(f["local"] is not None for f in folds)
    feats = []
    for f in folds:
        mem = None
        if linker is not None and len(f["gallery_labels"]):
            mem = linker.memberships(f["emb"], f["emb_gallery"], f["gallery_labels"])
        feats.append(pair_features(f["emb"], f["orientation"], memberships=mem, local=f["local"], neighbours=k,
                                   emb_pool=f["emb_gallery"] if pool else None))
    truths = [f["truth"] for f in folds]
    pm = fit_pair_model([{"feats": x, "truth": t} for x, t in zip(feats, truths)],
                        _feature_names(linker is not None, has_local, k), cc["calibration"], int(cc["max_pairs"]),
                        int(cc["seed"]))
    probs = [pm.predict(x) for x in feats]
    sizes = [len(t) for t in truths]
    model = ClusterModel(pm, "average", 0.5, None, linker, {}, note=note, neighbours=k, train_pool=pool)
    return _Stage(model, method_curves(probs, truths, conf), int(sum(sizes)))


def _finish(stage: _Stage, prior: dict | None, conf: dict) -> ClusterModel:
    w = 1.0
    if prior:
        w = stage.n_photos / (stage.n_photos + float(conf["cluster"]["cut_prior_photos"]))
    method, cut, edge, scores = choose_cut(stage.curves, prior, w)
    m = stage.model
    m.method, m.cut, m.edge_cut, m.heldout = method, cut, edge, scores
    return m


def fit_cluster_model(folds: list[dict], conf: dict, prior: dict | None = None) -> ClusterModel:
    """Fit the train linker and the pair model on one dataset's held-out folds, and choose method and cut
    (leaning on ``prior``, pooled curves of other datasets, when given). Raises ValueError when the folds cannot
    fit a model (no fold, or no same-individual pair at all)."""
    return _finish(_fit_stage(folds, conf), prior, conf)


def fit_fallback_model(folds_by_dataset: dict[str, list[dict]], conf: dict) -> ClusterModel | None:
    """A model for a dataset with no training identities: pair model on test-test features only (no train
    links, no train photos in the neighbourhoods), fitted on the pooled held-out folds of the other datasets, with
    the method and cut that maximise their mean held-out ARI. None when no other dataset has usable folds."""
    folds = [f for fs in folds_by_dataset.values() for f in fs]
    names = ", ".join(sorted(folds_by_dataset))
    try:
        stage = _fit_stage(folds, conf, links=False, pool=False,
                           note=f"no training identities: pair model, method and cut fitted on {names} (fallback)")
    except ValueError:
        return None
    return _finish(stage, None, conf)


# ---------------------------------------------------------------------------------------------------------------
# Clustering a competition


def predict_clusters(model: ClusterModel, emb: np.ndarray, orientation=None, *, emb_train: np.ndarray | None = None,
                     train_labels: np.ndarray | None = None, local: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Cluster M images of one dataset with a fitted model.

    ``emb: [M, D]``; ``emb_train: [N, D]`` and ``train_labels: [N]`` are the gallery of train links (used when
    the model has a linker). Returns (``labels: [M] int64``, ``prob: [M, M] float32``).
    """
    mem = None
    if model.linker is not None and emb_train is not None and len(emb_train):
        mem = model.linker.memberships(emb, emb_train, np.asarray(train_labels, dtype=object))
    if "local" not in model.pair_model.features:
        local = None
    pool = emb_train if model.train_pool else None
    feats = pair_features(emb, orientation, memberships=mem, local=local, neighbours=model.neighbours, emb_pool=pool)
    if "via" in model.pair_model.features and "via" not in feats:
        raise ValueError("the model uses train links but no training gallery was given")
    prob = model.pair_model.predict(feats)
    del feats
    return cluster_matrix(prob, model.method, model.cut, model.edge_cut), prob


class _CosineModel(PairModel):
    """(cosine + 1) / 2 as the pair 'probability' (no labelled pair to fit anything on)."""

    def predict(self, feats: dict[str, np.ndarray], shift: float = 0.0) -> np.ndarray:
        prob = np.clip((feats["cos"] + 1) / 2, 0, 1).astype(np.float32)
        np.fill_diagonal(prob, 1.0)
        return prob


def _no_train_model(conf: dict) -> ClusterModel:
    """Last resort when no dataset has training identities: average linkage on (cosine + 1) / 2 at
    cluster.fallback_cut (a cosine)."""
    c = float(conf["cluster"]["fallback_cut"])
    pm = _CosineModel(("cos",), np.zeros(1, np.float32), np.ones(1, np.float32), np.ones(1), 0.0)
    return ClusterModel(pm, "average", (c + 1) / 2, None, None, {},
                        note=f"no training identities in any dataset: average linkage at cosine {c} "
                             "(cluster.fallback_cut)")


def cluster_competition(train: pd.DataFrame, emb_train: np.ndarray, test: pd.DataFrame, emb_test: np.ndarray,
                        conf: dict, local_fn: LocalFn | None = None, verbose: bool = True
                        ) -> tuple[np.ndarray, dict]:
    """Cluster every dataset's test images.

    ``train``: labelled rows (identity, dataset, orientation), ``emb_train: [N, D]``; ``test``: rows to cluster
    (dataset, orientation), ``emb_test: [M, D]``; both L2-normalised, row-aligned with their frames.
    Returns (``labels: [M] object``, each ``cluster_<dataset>_<k>``, in ``test`` row order;
    ``{dataset: details}`` with method, cut, held-out ARI, n_clusters, n_images, and a note on fallbacks).
    """
    cc = conf["cluster"]
    train = train.reset_index(drop=True)
    test = test.reset_index(drop=True)
    if len(train) != len(emb_train) or len(test) != len(emb_test):
        raise ValueError("frames and embeddings must be row-aligned")
    folds_by_ds: dict[str, list[dict]] = {}

    def folds_of(name: str) -> list[dict]:
        if name not in folds_by_ds:
            rows = np.flatnonzero((train["dataset"] == name).to_numpy())
            folds_by_ds[name] = heldout_folds(train.iloc[rows], emb_train[rows], conf, local_fn) if len(rows) else []
        return folds_by_ds[name]

    stages = {}
    for name in sorted(test["dataset"].unique()):
        try:
            stages[name] = _fit_stage(folds_of(name), conf)
        except ValueError:  # no usable fold: too few identities, or no individual with two photos
            pass
    models, details = {}, {}
    for name, stage in stages.items():  # each dataset's cut leans on the others' curves as much as it lacks photos
        others = {d: st.curves for d, st in stages.items() if d != name}
        prior = pooled_curves(others, {d: stages[d].n_photos for d in others}) if cc["cut_prior_photos"] else None
        models[name] = _finish(stage, prior, conf)
    fallback = None
    labels = np.empty(len(test), dtype=object)
    for name in sorted(test["dataset"].unique()):
        qrows = np.flatnonzero((test["dataset"] == name).to_numpy())
        trows = np.flatnonzero((train["dataset"] == name).to_numpy())
        model = models.get(name)
        if model is None:
            if fallback is None:
                usable = {d: folds_of(d) for d in sorted(train["dataset"].unique())}
                fallback = fit_fallback_model({d: f for d, f in usable.items() if f}, conf) or _no_train_model(conf)
            model = fallback
            why = "no training identities" if len(trows) == 0 else "too few training identities to hold out"
            model_note = model.note.replace("no training identities", why, 1)
            if verbose:
                print(f"{name}: {model_note}")
        else:
            model_note = ""
        sub = test.iloc[qrows]
        local = None
        if local_fn is not None and "local" in model.pair_model.features:
            local = local_fn(sub, emb_test[qrows])
        lab, _ = predict_clusters(model, emb_test[qrows], _orientation(sub), emb_train=emb_train[trows],
                                  train_labels=train["identity"].to_numpy(dtype=object)[trows], local=local)
        labels[qrows] = [cluster_label(name, k) for k in lab]
        det = model.details()
        if model_note:
            det["note"] = model_note
        details[name] = {**det, "n_clusters": int(len(np.unique(lab))), "n_images": int(len(qrows))}
    return labels, details


def query_clusters(emb_q: np.ndarray, emb_db: np.ndarray, db_labels, conf: dict, orientation_q=None,
                   orientation_db=None) -> np.ndarray:
    """2025 helper: group one dataset's queries into putative individuals.

    ``emb_q: [Q, D]`` queries, ``emb_db: [N, D]`` labelled database with ``db_labels: [N]`` (one dataset).
    The model is fitted on held-out splits of the database exactly as in 2026 mode (train links included), so
    queries that land in one cluster with no confident database match are likely one new individual.
    Returns ``labels: [Q] int64`` (0, 1, ... in order of first appearance).
    """
    db = pd.DataFrame({"identity": np.asarray(db_labels, dtype=object), "dataset": "_",
                       "orientation": orientation_db if orientation_db is not None else ""}, index=range(len(emb_db)))
    q = pd.DataFrame({"dataset": "_", "orientation": orientation_q if orientation_q is not None else ""},
                     index=range(len(emb_q)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels, _ = cluster_competition(db, emb_db, q, emb_q, conf, verbose=False)
    return _first_seen(labels)


# ---------------------------------------------------------------------------------------------------------------
# Local scores from kit.rerank (LightGlue), when rerank.enabled


def rerank_pair_scores(conf: dict) -> LocalFn:
    """A LocalFn that matches each image against its ``cluster.rerank_topk`` nearest images (by cosine) with the
    re-ranker's local features + LightGlue and returns the ``rerank.local_score`` of each matched pair (NaN
    elsewhere), symmetrised by the max of both directions. Weights resolve now (WeightsError if missing)."""
    from . import rerank
    from .cache import cache_root
    from .retrieve import dedup_shortlist

    rc = rerank.rerank_conf(conf["rerank"])
    k = int(conf["cluster"]["rerank_topk"])
    matcher = rerank.LocalMatcher(rc)

    def local_fn(frame: pd.DataFrame, emb: np.ndarray) -> np.ndarray:
        m = len(frame)
        out = np.full((m, m), np.nan, np.float32)
        if m < 2 or k <= 0:
            return out
        sims = np.asarray(emb, np.float32) @ np.asarray(emb, np.float32).T  # [m, m]
        np.fill_diagonal(sims, -np.inf)
        index = dedup_shortlist(sims, np.arange(m), min(k, m - 1), 0)  # [m, k]
        mask = index >= 0
        if rc["skip_opposite_flanks"] and "orientation" in frame.columns:
            o = frame["orientation"].to_numpy()
            mask &= rerank.orientation_pair_mask(o, o, index)
        # each unordered pair once: (i, j) with j < i is skipped when i is in j's shortlist too
        rows = np.repeat(np.arange(m), index.shape[1]).reshape(index.shape)
        listed = np.zeros((m, m), bool)
        listed[rows[index >= 0], index[index >= 0]] = True
        mask &= ~((index < rows) & listed[np.clip(index, 0, None), rows])
        paths = frame["filepath"].tolist()
        local = rerank.rerank_shortlist(paths, paths, index, rc, cache_root(conf["cache"]), pair_mask=mask,
                                        matcher=matcher)
        score = local[rc["local_score"]] if rc["local_score"] in local else local["n_matches"]
        ok = mask & np.isfinite(score)
        out[rows[ok], index[ok]] = score[ok]
        return np.fmax(out, out.T)

    return local_fn


# ---------------------------------------------------------------------------------------------------------------
# Submission and validation (the --task clustering paths of `kit submit` / `kit validate`)


def check_layout(meta: pd.DataFrame, task: str, where: str) -> None:
    """Raise DataError when a competition's layout does not fit the task ("clustering" | "identification")."""
    layout = meta.attrs.get("layout", "2025")
    if task == "clustering" and layout != "2026":
        raise DataError(
            f"{where} is an AnimalCLEF 2025 competition (split database/query): clustering needs the 2026 layout "
            "(split train/test). Run it with --task identification (the default for this folder), or make a 2026 "
            "folder with `kit import-folders --layout 2026` / `kit synth --layout 2026`.")
    if task == "identification" and layout != "2025":
        raise DataError(
            f"{where} is an AnimalCLEF 2026 competition (split train/test): identification needs the 2025 layout "
            "(split database/query). Run it with --task clustering (the default for this folder).")


def _local_fn(conf: dict) -> LocalFn | None:
    if conf["rerank"].get("enabled") and int(conf["cluster"]["rerank_topk"]) > 0:
        return rerank_pair_scores(conf)
    return None


def run_cluster_submission(meta: pd.DataFrame, conf: dict, verbose: bool = True) -> tuple[pd.DataFrame, dict]:
    """``image_id,cluster`` for every test row of a 2026 competition (metadata order), and per-dataset details."""
    from .data import labelled_mask
    from .pipeline import embed_frame

    check_layout(meta, "clustering", meta.attrs.get("root", "the competition"))
    emb = embed_frame(meta, conf)
    lab = labelled_mask(meta)
    labels, details = cluster_competition(meta[lab], emb[lab], meta[~lab], emb[~lab], conf, _local_fn(conf), verbose)
    pred = pd.DataFrame({"image_id": meta.loc[~lab, "image_id"].to_numpy(), "cluster": labels})
    return pred, details


def run_cluster_validation(meta: pd.DataFrame, conf: dict, verbose: bool = True) -> tuple[dict, dict]:
    """ARI on an identity-disjoint split of the TRAIN identities: {dataset: {metric: value}}.

    Each dataset's train rows are split with splits.open_set_split (validate.n_unknown photos of hidden
    identities, validate.query_fraction of the others' photos, validate.seed); the hidden part is clustered from
    the rest exactly as ``kit submit`` clusters the test, then scored with metrics.score_2026. With two or more
    datasets, ``ARI_fallback`` scores each one with the model fitted on the OTHER datasets only: the estimate for
    a dataset without training identities. Returns (result, details); result also holds "mean" (ARI over datasets).
    """
    from . import metrics
    from .data import labelled_mask
    from .pipeline import embed_frame
    from .splits import hide_answers

    check_layout(meta, "clustering", meta.attrs.get("root", "the competition"))
    vc = conf["validate"]
    lab = meta[labelled_mask(meta)].reset_index(drop=True)
    if lab.empty:
        raise DataError("validation needs training identities; this competition has no train rows")
    emb = embed_frame(lab, conf)
    split = open_set_split(lab.assign(_row=np.arange(len(lab))), n_unknown=vc["n_unknown"],
                           query_fraction=vc["query_fraction"], seed=vc["seed"])
    db, q, solution = hide_answers(split)
    local_fn = _local_fn(conf)
    labels, details = cluster_competition(db, emb[db["_row"]], q, emb[q["_row"]], conf, local_fn, verbose)
    sub = pd.DataFrame({"image_id": q["image_id"].to_numpy(), "cluster": labels})
    _, table = metrics.score_2026(solution[["image_id", "identity", "dataset"]], sub)
    result: dict[str, dict] = {}
    for name, row in table.iterrows():
        det = details.get(name, {})
        result[name] = {"ARI": float(row["ARI"]), "n_clusters": int(row["n_clusters"]),
                        "n_identities": int(row["n_identities"]), "n_images": int(row["n_images"]),
                        "method": det.get("method"), "cut": det.get("cut"), "heldout_ARI": det.get("heldout_ARI")}
    names = sorted(table.index)
    if len(names) >= 2:  # leave-one-dataset-out: how the no-train fallback would do on each dataset
        for name in names:
            others = db[db["dataset"] != name]
            held = q["dataset"] == name
            qa = q[held]
            fl, _ = cluster_competition(others, emb[others["_row"]], qa, emb[qa["_row"]], conf, local_fn, False)
            truth = solution.loc[held.to_numpy(), "identity"].to_numpy(dtype=object)
            result[name]["ARI_fallback"] = float(ari(truth, fl))
    result["mean"] = {"ARI": float(table["ARI"].mean())}
    return result, {"details": details, "solution": solution, "predictions": sub}


def format_report(result: dict) -> str:
    """A short markdown section: ARI and predicted vs true cluster counts per dataset."""
    lines = ["## Clustering validation (AnimalCLEF 2026 mode)", "",
             "Identity-disjoint split of the train identities; ARI = sklearn adjusted_rand_score.", "",
             "| dataset | ARI | clusters (pred / true) | images | method | cut | held-out ARI | fallback ARI |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in result.items():
        if name == "mean":
            continue
        fb = r.get("ARI_fallback")
        lines.append(f"| {name} | {r['ARI']:.4f} | {r['n_clusters']} / {r['n_identities']} | {r['n_images']} | "
                     f"{r['method'] or 'n/a'} | {_fmt(r['cut'])} | {_fmt(r['heldout_ARI'])} | {_fmt(fb)} |")
    lines += ["", f"Mean ARI over datasets: {result['mean']['ARI']:.4f}", ""]
    return "\n".join(lines)


def _fmt(x) -> str:
    return "n/a" if x is None or x != x else f"{x:.4f}"
