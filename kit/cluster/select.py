"""Fitting a dataset's clustering on held-out TRAIN identities, and clustering its test photos with it.

Everything is fitted on held-out splits of the TRAIN identities (splits.open_set_split: whole identities hidden, as
the test's new individuals are, plus some photos of the others), never on test photos: the train linker, the pair
model, and the method and cut that score the best held-out ARI (``cluster.method`` / ``cluster.cut`` "auto").
A dataset with few held-out photos leans on the other datasets' pooled ARI curves to choose its cut. A dataset
without training identities (TexasHornedLizards) borrows a pair model, method and cut fitted on the other
datasets, and says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..schema import cluster_label
from ..splits import anchors, open_set_split
from .features import (DIRECT_FEATURES, HEAD_FEATURES, LINK_FEATURES, LOCAL_FEATURES, NEIGHBOUR_FEATURES, LocalFn,
                       MeanPairModel, PairModel, TrainLinker, _linker_pairs, fit_linker, fit_pair_model,
                       fit_shared_pair_model, out_of_fold, pair_features)
from .constraints import cluster_with_links, constrain, index_links
from .linkage import CUT_GRID, ari_curve, cluster_matrix


METHODS = ("average", "complete", "components")  # what method="auto" chooses among (average first: the default)


AUTO_MARGIN = 0.01  # method="auto": another method replaces average linkage only with a held-out ARI this much higher


# A metric head trainer: (descriptors [N, D] of labelled photos, their identities [N]) -> an object whose
# ``project([M, D]) -> [M, d]`` maps photos into the head's space (unit rows; kit/head.py's Head), or None where the
# photos are too few to train one. kit.pipeline.clustering builds one from the head section.
HeadFn = Callable[[np.ndarray, np.ndarray], object]


def head_space(emb: np.ndarray, z: np.ndarray, weight: float) -> np.ndarray:
    """``[M, D + d] float32`` unit rows whose dot product is ``(1 - weight)`` x the cosine of ``emb [M, D]`` plus
    ``weight`` x the cosine of ``z [M, d]`` (both unit rows): the frozen and the head's space blended."""
    w = float(weight)
    return np.concatenate([np.asarray(emb, np.float32) * np.float32(np.sqrt(1 - w)),
                           np.asarray(z, np.float32) * np.float32(np.sqrt(w))], 1)


def _orientation(frame: pd.DataFrame):
    return frame["orientation"].to_numpy() if "orientation" in frame.columns else None


def heldout_folds(train: pd.DataFrame, emb_train: np.ndarray, cc: dict, local_fn: LocalFn | None = None,
                  head_fn: HeadFn | None = None) -> list[dict]:
    """Pseudo-test sets cut from one dataset's TRAIN rows, each clustered as the test will be.

    ``train``: rows with ``identity`` (one dataset); ``emb_train: [N, D]``. Fold f is
    ``open_set_split(unknown_fraction=heldout_unknown_fraction, query_fraction=heldout_query_fraction, seed=seed+f)``:
    its queries (hidden identities' photos and some photos of the others) are the pseudo-test, its database the
    pseudo-train. Returns a list of {"emb", "truth", "orientation", "local", "emb_gallery", "gallery_labels"};
    folds whose pseudo-test has no two photos of one individual are dropped (they cannot rank cuts).
    ``head_fn``: each fold also gets a head trained on its pseudo-train alone (never on the identities or photos it
    is judged on), and "head", "head_gallery": its pseudo-test and pseudo-train in that head's space (absent where
    ``head_fn`` returns None).
    """
    frame = train.reset_index(drop=True).assign(_row=np.arange(len(train)))
    anchor = anchors(frame)  # identity keys made of photos: the shared pair model's folds move with no rename
    folds = []
    for f in range(int(cc["heldout_folds"])):
        split = open_set_split(frame, unknown_fraction=cc["heldout_unknown_fraction"],
                               query_fraction=cc["heldout_query_fraction"], seed=int(cc["seed"]) + f, stable=True)
        test = split[split["split"] == "query"]
        gal = split[split["split"] == "database"]
        if len(test) < 2 or not test["identity"].duplicated().any():
            continue
        emb_t = emb_train[test["_row"].to_numpy()]
        folds.append({
            "emb": emb_t, "truth": test["identity"].to_numpy(dtype=object), "orientation": _orientation(test),
            "keys": np.array([anchor[t] for t in test["identity"]], dtype=object),
            "local": local_fn(test, emb_t) if local_fn is not None else None,
            "emb_gallery": emb_train[gal["_row"].to_numpy()], "gallery_labels": gal["identity"].to_numpy(dtype=object),
        })
        if head_fn is not None and len(gal):
            head = head_fn(folds[-1]["emb_gallery"], folds[-1]["gallery_labels"])
            if head is not None:
                folds[-1]["head"] = head.project(emb_t)
                folds[-1]["head_gallery"] = head.project(folds[-1]["emb_gallery"])
    return folds


@dataclass
class ClusterModel:
    """Everything fitted for one dataset: how to score pairs, and how to cut."""

    pair_model: PairModel  # or a MeanPairModel (cluster.cut_on=out-of-fold), a SharedPairModel (pair_model=shared)
    method: str  # "average" | "complete" | "components"
    cut: float  # P(same) a merge needs
    edge_cut: float | None  # components only: P(same) an edge needs
    linker: TrainLinker | None  # None: no train links (disabled, no train, or nothing to calibrate)
    heldout: dict = field(default_factory=dict)  # {method: mean held-out ARI at its best cut}
    note: str = ""  # how the model was obtained when it is not the dataset's own (fallback)
    neighbours: int = 0  # k of the neighbour features (csls, rank); 0 = none
    train_pool: bool = False  # train photos join the neighbourhoods (as they did when the model was fitted)
    head_space: float = 0.0  # weight of the metric head's cosine in the clustering space (cluster.head_space)
    head_feature: bool = False  # the head's pair features are in (cluster.head_feature)
    head_links: float = 0.0  # weight of the head's cosine in the train links' space (cluster.head_links)

    def details(self) -> dict:
        return {"method": self.method, "cut": self.cut, "edge_cut": self.edge_cut,
                "heldout_ARI": self.heldout.get(self.method, float("nan")), "heldout_by_method": dict(self.heldout),
                "train_links": self.linker is not None, "pair_model": self.pair_model.describe(),
                "head": {"space": self.head_space, "feature": self.head_feature, "links": self.head_links},
                **({"note": self.note} if self.note else {})}


def _feature_names(links: bool, local: tuple[str, ...], neighbours: int, head: bool = False) -> tuple[str, ...]:
    """The pair model's features; ``local``: the LocalFn's column names (empty: no local matching)."""
    more = tuple(n for n in local if n not in LOCAL_FEATURES)  # cluster.local_columns=all: every matcher column
    return (DIRECT_FEATURES + (NEIGHBOUR_FEATURES if neighbours > 0 else ()) + (LINK_FEATURES if links else ())
            + (LOCAL_FEATURES + more if local else ()) + (HEAD_FEATURES if head else ()))


def reads_head(cc: dict) -> bool:
    """Whether any cluster setting reads a metric head (head_space, head_feature, head_links): else none is
    trained."""
    return float(cc["head_space"]) > 0 or bool(cc["head_feature"]) or float(cc["head_links"]) > 0


def _head_use(cc: dict, has_head: bool) -> tuple[float, bool, float]:
    """(head_space weight, head_feature, head weight of the train links' space) in force: all off without a head."""
    if not has_head:
        return 0.0, False, 0.0
    w = float(cc["head_space"])
    return w, bool(cc["head_feature"]), float(cc["head_links"]) or w


def _spaces(emb, emb_pool, z, z_pool, w: float):
    """The clustering space of the photos and of the pool (the train photos): blended with the head's at ``w``."""
    if w <= 0:
        return emb, emb_pool
    return head_space(emb, z, w), (None if emb_pool is None else head_space(emb_pool, z_pool, w))


def _reads_local(model: "ClusterModel") -> bool:
    """Whether the model's pair model reads any local column (column selection may keep some and drop others)."""
    return any(n.startswith("local") for n in model.pair_model.features)


def _methods(cc: dict) -> list[str]:
    method = cc["method"]
    if method == "auto":
        return list(METHODS)
    if method not in METHODS + ("single",):
        raise ConfigError(f"cluster.method={method!r}: choose auto, {', '.join(METHODS)} or single")
    return [method]


def method_curves(probs: list[np.ndarray], truths: list[np.ndarray], cc: dict) -> dict[str, dict]:
    """Mean held-out ARI over folds for every method and cut: {method: {"cuts": [C], "edges": [E] | None,
    "ari": [C] or [E, C] (components; NaN where the cut exceeds the edge cut)}}. Fixed cut/edge_cut in the config
    leave a grid of one."""
    cuts = CUT_GRID if cc["cut"] == "auto" else np.array([float(cc["cut"])])
    out = {}
    for method in _methods(cc):
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
class HeldoutFit:
    """A dataset's fitted pair model with its held-out curves, before method and cut are chosen."""

    model: ClusterModel
    curves: dict
    n_photos: int  # pseudo-test photos over all folds (the weight of its own evidence)


def _fit_heldout(folds: list[dict], cc: dict, links: bool = True, pool: bool = True, note: str = "",
                 head: bool = True, pc: dict | None = None) -> HeldoutFit:
    if not folds:
        raise ValueError("no held-out fold with two photos of one individual")
    k = int(cc["neighbours"])
    w, head_feat, wl = _head_use(cc, head and all("head" in f for f in folds))
    spaces = [_spaces(f["emb"], f["emb_gallery"], f.get("head"), f.get("head_gallery"), w) for f in folds]
    lspaces = [_spaces(f["emb"], f["emb_gallery"], f.get("head"), f.get("head_gallery"), wl) for f in folds]
    linker = None
    if links and cc["train_links"]:
        pairs = [_linker_pairs(e, f["truth"], g, f["gallery_labels"])
                 for f, (e, g) in zip(folds, lspaces) if len(f["gallery_labels"])]
        if pairs:
            linker = fit_linker(np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs]),
                                int(cc["link_topk"]))
    has_local = tuple(folds[0]["local"]) if all(f["local"] is not None for f in folds) else ()
    feats = []
    for f, (e, g), (le, lg) in zip(folds, spaces, lspaces):
        mem = None
        if linker is not None and len(f["gallery_labels"]):
            mem = linker.memberships(le, lg, f["gallery_labels"])
        feats.append(pair_features(e, f["orientation"], memberships=mem, local=f["local"], neighbours=k,
                                   emb_pool=g if pool else None, emb_head=f.get("head") if head_feat else None,
                                   head_pool=f.get("head_gallery") if pool else None))
    truths = [f["truth"] for f in folds]
    names = _feature_names(linker is not None, has_local, k, head_feat)
    if cc["pair_model"] == "shared":
        if pc is None:
            raise ValueError("cluster.pair_model=shared needs the pairmodel settings (pc)")
        pm, probs = fit_shared_pair_model([{"feats": x, "truth": f["truth"], "keys": f["keys"]}
                                           for x, f in zip(feats, folds)], names, pc, int(pc["max_pairs"]))
    else:
        pm = fit_pair_model([{"feats": x, "truth": t} for x, t in zip(feats, truths)], names, cc["calibration"],
                            int(cc["max_pairs"]), int(cc["seed"]))
        if cc["cut_on"] == "out-of-fold":  # the test is then scored by the same group models
            group_models: list = []
            probs = out_of_fold([{"feats": x, "truth": f["truth"], "keys": f["keys"]} for x, f in zip(feats, folds)],
                                names, cc["calibration"], int(cc["max_pairs"]), int(cc["seed"]), models=group_models,
                                full=pm)
            pm = MeanPairModel(group_models, pm)
        else:
            probs = [pm.predict(x) for x in feats]
    sizes = [len(t) for t in truths]
    model = ClusterModel(pm, "average", 0.5, None, linker, {}, note=note, neighbours=k, train_pool=pool,
                         head_space=w, head_feature=head_feat, head_links=wl)
    return HeldoutFit(model, method_curves(probs, truths, cc), int(sum(sizes)))


def _choose_method(fit: HeldoutFit, prior: dict | None, cc: dict) -> ClusterModel:
    w = 1.0
    if prior:
        w = fit.n_photos / (fit.n_photos + float(cc["cut_prior_photos"]))
    method, cut, edge, scores = choose_cut(fit.curves, prior, w)
    m = fit.model
    m.method, m.cut, m.edge_cut, m.heldout = method, cut, edge, scores
    return m


def fit_cluster_model(folds: list[dict], cc: dict, prior: dict | None = None, pc: dict | None = None
                      ) -> ClusterModel:
    """Fit the train linker and the pair model on one dataset's held-out folds, and choose method and cut
    (leaning on ``prior``, pooled curves of other datasets, when given). Raises ValueError when the folds cannot
    fit a model (no fold, or no same-individual pair at all)."""
    return _choose_method(_fit_heldout(folds, cc, pc=pc), prior, cc)


def fit_fallback_model(folds_by_dataset: dict[str, list[dict]], cc: dict, pc: dict | None = None
                       ) -> ClusterModel | None:
    """A model for a dataset with no training identities: pair model on test-test features only (no train
    links, no train photos in the neighbourhoods), fitted on the pooled held-out folds of the other datasets, with
    the method and cut that maximise their mean held-out ARI. None when no other dataset has usable folds."""
    folds = [f for fs in folds_by_dataset.values() for f in fs]
    names = ", ".join(sorted(folds_by_dataset))
    try:
        fit = _fit_heldout(folds, cc, links=False, pool=False, head=False, pc=pc,
                           note=f"no training identities: pair model, method and cut fitted on {names} (fallback)")
    except ValueError:
        return None
    return _choose_method(fit, None, cc)


def predict_clusters(model: ClusterModel, emb: np.ndarray, orientation=None, *, emb_train: np.ndarray | None = None,
                     train_labels: np.ndarray | None = None, local: dict[str, np.ndarray] | None = None,
                     links: tuple[np.ndarray, np.ndarray] | None = None,
                     head: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cluster M images of one dataset with a fitted model.

    ``emb: [M, D]``; ``emb_train: [N, D]`` and ``train_labels: [N]`` are the gallery of train links (used when
    the model has a linker). ``local``: a LocalFn's ``{column: [M, M]}`` (read when the model has local columns).
    ``links``: ``(must [K, 2], cannot [L, 2])`` row pairs that the labels honour
    (kit/cluster/constraints.py; P is 1 / 0 there). ``head``: ``(z [M, d], z_train [N, d])`` the photos and the
    train photos in the metric head's space, needed when the model reads it (``head_space`` / ``head_feature``).
    Returns (``labels: [M] int64``, ``prob: [M, M] float32``).
    """
    if (model.head_space > 0 or model.head_feature or model.head_links > 0) and head is None:
        raise ValueError("the model reads the metric head's space but no head projection was given")
    z, z_train = head if head is not None else (None, None)
    lemb, lemb_train = _spaces(emb, emb_train, z, z_train, model.head_links)
    emb, emb_train = _spaces(emb, emb_train, z, z_train, model.head_space)
    mem = None
    if model.linker is not None and emb_train is not None and len(emb_train):
        mem = model.linker.memberships(lemb, lemb_train, np.asarray(train_labels, dtype=object))
    if not _reads_local(model):
        local = None
    pool = emb_train if model.train_pool else None
    feats = pair_features(emb, orientation, memberships=mem, local=local, neighbours=model.neighbours, emb_pool=pool,
                          emb_head=z if model.head_feature else None,
                          head_pool=z_train if model.train_pool and model.head_feature else None)
    if "via" in model.pair_model.features and "via" not in feats:
        raise ValueError("the model uses train links but no training gallery was given")
    prob = model.pair_model.predict(feats)
    del feats
    if links is not None and (len(links[0]) or len(links[1])):
        labels = cluster_with_links(prob, model.method, model.cut, model.edge_cut, *links)
        return labels, constrain(prob, *links)
    return cluster_matrix(prob, model.method, model.cut, model.edge_cut), prob


class _CosineModel(PairModel):
    """(cosine + 1) / 2 as the pair 'probability' (no labelled pair to fit anything on)."""

    def predict(self, feats: dict[str, np.ndarray], shift: float = 0.0) -> np.ndarray:
        prob = np.clip((feats["cos"] + 1) / 2, 0, 1).astype(np.float32)
        np.fill_diagonal(prob, 1.0)
        return prob


def _no_train_model(cc: dict) -> ClusterModel:
    """Last resort when no dataset has training identities: average linkage on (cosine + 1) / 2 at
    cluster.fallback_cut (a cosine)."""
    c = float(cc["fallback_cut"])
    pm = _CosineModel(("cos",), np.zeros(1, np.float32), np.ones(1, np.float32), np.ones(1), 0.0)
    return ClusterModel(pm, "average", (c + 1) / 2, None, None, {},
                        note=f"no training identities in any dataset: average linkage at cosine {c} "
                             "(cluster.fallback_cut)")


def cluster_competition(train: pd.DataFrame, emb_train: np.ndarray, test: pd.DataFrame, emb_test: np.ndarray,
                        cc: dict, local_fn: LocalFn | None = None, verbose: bool = True,
                        links: pd.DataFrame | None = None, head_fn: HeadFn | None = None, pc: dict | None = None
                        ) -> tuple[np.ndarray, dict]:
    """Cluster every dataset's test images.

    ``train``: labelled rows (identity, dataset, orientation), ``emb_train: [N, D]``; ``test``: rows to cluster
    (dataset, orientation), ``emb_test: [M, D]``; both L2-normalised, row-aligned with their frames.
    Returns (``labels: [M] object``, each ``cluster_<dataset>_<k>``, in ``test`` row order;
    ``{dataset: details}`` with method, cut, held-out ARI, n_clusters, n_images, and a note on fallbacks).
    ``links``: human must-/cannot-links between test photos (columns ``a``, ``b`` image_ids, ``same`` bool), honoured
    by each dataset's clustering (details then hold ``links``: how many applied). ``head_fn``: metric heads
    (cluster.head_space / head_feature): one per held-out fold on its pseudo-train, one for the test on the
    dataset's train photos; a dataset whose test or folds get no head clusters without one. ``pc``: the
    ``pairmodel`` section, read with ``cluster.pair_model=shared`` (the identification's pair model).
    """
    train = train.reset_index(drop=True)
    test = test.reset_index(drop=True)
    if len(train) != len(emb_train) or len(test) != len(emb_test):
        raise ValueError("frames and embeddings must be row-aligned")
    if cc["pair_model"] == "shared" and pc is None:
        raise ValueError("cluster.pair_model=shared needs the pairmodel settings (pc)")
    folds_by_ds: dict[str, list[dict]] = {}
    if not reads_head(cc):
        head_fn = None
    heads: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}  # {dataset: (test, train) in its head's space}
    for name in sorted(test["dataset"].unique()) if head_fn is not None else ():
        rows = np.flatnonzero((train["dataset"] == name).to_numpy())
        h = head_fn(emb_train[rows], train["identity"].to_numpy(dtype=object)[rows]) if len(rows) else None
        qrows = np.flatnonzero((test["dataset"] == name).to_numpy())
        heads[name] = None if h is None else (h.project(emb_test[qrows]), h.project(emb_train[rows]))

    def folds_of(name: str) -> list[dict]:
        if name not in folds_by_ds:
            rows = np.flatnonzero((train["dataset"] == name).to_numpy())
            hf = head_fn if heads.get(name) is not None else None
            folds_by_ds[name] = heldout_folds(train.iloc[rows], emb_train[rows], cc, local_fn, hf) if len(rows) else []
        return folds_by_ds[name]

    fits = {}
    for name in sorted(test["dataset"].unique()):
        try:
            fits[name] = _fit_heldout(folds_of(name), cc, head=heads.get(name) is not None, pc=pc)
        except ValueError:  # no usable fold: too few identities, or no individual with two photos
            pass
    models, details = {}, {}
    for name, fit in fits.items():  # each dataset's cut leans on the others' curves as much as it lacks photos
        others = {d: st.curves for d, st in fits.items() if d != name}
        prior = pooled_curves(others, {d: fits[d].n_photos for d in others}) if cc["cut_prior_photos"] else None
        models[name] = _choose_method(fit, prior, cc)
    fallback = None
    labels = np.empty(len(test), dtype=object)
    for name in sorted(test["dataset"].unique()):
        qrows = np.flatnonzero((test["dataset"] == name).to_numpy())
        trows = np.flatnonzero((train["dataset"] == name).to_numpy())
        model = models.get(name)
        if model is None:
            if fallback is None:
                usable = {d: folds_of(d) for d in sorted(train["dataset"].unique())}
                fallback = fit_fallback_model({d: f for d, f in usable.items() if f}, cc, pc) or _no_train_model(cc)
            model = fallback
            why = "no training identities" if len(trows) == 0 else "too few training identities to hold out"
            model_note = model.note.replace("no training identities", why, 1)
            if verbose:
                print(f"{name}: {model_note}")
        else:
            model_note = ""
        sub = test.iloc[qrows]
        local = None
        if local_fn is not None and _reads_local(model):
            local = local_fn(sub, emb_test[qrows])
        own = index_links(sub["image_id"].to_numpy(dtype=object), links) if links is not None else None
        lab, _ = predict_clusters(model, emb_test[qrows], _orientation(sub), emb_train=emb_train[trows],
                                  train_labels=train["identity"].to_numpy(dtype=object)[trows], local=local,
                                  links=own, head=heads.get(name) if model is models.get(name) else None)
        labels[qrows] = [cluster_label(name, k) for k in lab]
        det = model.details()
        if model_note:
            det["note"] = model_note
        details[name] = {**det, "n_clusters": int(len(np.unique(lab))), "n_images": int(len(qrows))}
        if own is not None:
            details[name]["links"] = {"must": int(len(own[0])), "cannot": int(len(own[1]))}
    return labels, details
