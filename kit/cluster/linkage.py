"""Clustering a pairwise P(same individual) matrix, and the adjusted Rand index of the result.

Agglomerative clustering on 1 - P with ``average``, ``complete`` or ``single`` linkage, cut where the linkage P
falls below ``cut``; or ``components``: connected components of the pairs with P >= ``edge_cut``, each then split
by average linkage at ``cut``. Anything that yields a symmetric ``[M, M]`` probability matrix can be clustered:
``cluster_matrix`` does not care where it came from.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import linkage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from scipy.special import expit

from ..errors import ConfigError

CUT_GRID = expit(np.arange(-7.0, 7.01, 0.25))  # candidate P(same) cuts, evenly spaced in logit: 0.0009 .. 0.9991


LINKAGES = ("average", "complete", "single")  # scipy linkages cluster_matrix accepts ("single" = plain components)


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


def cut_tree(tree: np.ndarray, cut: float, forbid: np.ndarray | None = None) -> np.ndarray:
    """[M] int64 labels: merges whose linkage P(same) is >= ``cut`` (distance <= 1 - cut) are kept.

    The same partition as scipy's ``fcluster(tree, 1 - cut, "distance")`` for the monotone linkages used here
    (average, complete, single), without its per-call tree validation, which dominates a scan over many cuts.
    ``forbid: [M - 1] bool``: merges (rows of ``tree``) never kept, whatever their P; it must hold every merge above
    a forbidden one too (kit/cluster/constraints.py: cannot-links).
    """
    m = len(tree) + 1
    ok = tree[:, 2] <= 1.0 - float(cut)
    keep = np.flatnonzero(ok if forbid is None else ok & ~np.asarray(forbid, bool))
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
