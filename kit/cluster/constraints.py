"""Human links honoured by the 2026 clustering: must-link and cannot-link pairs of test photos.

A must-link says two photos show one individual, a cannot-link that they show two (``kit review`` exports them,
``kit submit --decisions`` reads them: kit/review/decisions.py). Must-links close transitively (``link_groups``:
a-b and b-c put a, b and c in one group); a cannot-link inside one group is a contradiction (``check_links``).

``cluster_with_links`` honours both exactly, whatever the method:

- P = 1 inside each must-link group, and every other pair at most ``INSIDE`` (just below 1), so that the groups
  are the very first merges of any linkage (distance 0 against at least 1e-6);
- P = 0 between the two groups of every cannot-link, and the tree merge that first joins its two photos (their
  lowest common ancestor) is not kept, nor any merge above it: the cut stops there, whatever the average says.

Everything else is the ordinary cut: without links the labels are ``cluster_matrix``'s.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .linkage import _check_prob, _components, _first_seen, cut_tree, linkage_tree

INSIDE = 1.0 - 1e-6  # the most P an unlinked pair keeps: must-linked pairs (P = 1) merge before any other


class LinkError(ValueError):
    """Links that cannot all hold (a cannot-link inside a must-link group), or that name no photo of the set."""


def _pairs(pairs, m: int) -> np.ndarray:
    """``pairs`` as ``[K, 2] int64`` row indices, each checked to lie in 0 .. m-1."""
    out = np.asarray(pairs if pairs is not None else np.zeros((0, 2)), np.int64).reshape(-1, 2)
    if len(out) and (out.min() < 0 or out.max() >= m):
        raise LinkError(f"a link names row {int(out.max() if out.max() >= m else out.min())} of a set of {m} photos")
    return out


def link_groups(m: int, must) -> np.ndarray:
    """``[m] int64`` must-link group of each photo (the transitive closure of ``must: [K, 2]`` row pairs),
    numbered 0, 1, ... in order of first appearance; an unlinked photo is a group of its own."""
    parent = np.arange(m)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in _pairs(must, m):
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return _first_seen(np.array([root(i) for i in range(m)], np.int64))


def check_links(m: int, must, cannot) -> np.ndarray:
    """The must-link groups (``link_groups``) after checking that no cannot-link joins two photos of one group;
    raises LinkError naming the first such pair (its rows) otherwise."""
    groups = link_groups(m, must)
    for a, b in _pairs(cannot, m):
        if groups[a] == groups[b]:
            why = "one photo cannot be apart from itself" if a == b else "must-links join them (directly or through " \
                                                                         "other photos)"
            raise LinkError(f"rows {int(a)} and {int(b)} are cannot-linked, but {why}")
    return groups


def constrain(prob: np.ndarray, must, cannot) -> np.ndarray:
    """A copy of ``prob: [M, M]`` with the links written in: 1 inside each must-link group, at most ``INSIDE``
    elsewhere, and 0 between the groups of each cannot-link. Raises LinkError on contradicting links."""
    prob = _check_prob(prob)
    m = len(prob)
    groups = check_links(m, must, cannot)
    out = np.minimum(prob, np.float32(INSIDE))
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(groups[order]) != 0, True])
    members = {int(groups[order[a]]): order[a:b] for a, b in zip(bounds[:-1], bounds[1:])}
    for g in members.values():
        if len(g) > 1:
            out[np.ix_(g, g)] = 1.0
    for a, b in _pairs(cannot, m):
        ga, gb = members[int(groups[a])], members[int(groups[b])]
        out[np.ix_(ga, gb)] = 0.0
        out[np.ix_(gb, ga)] = 0.0
    return out


def forbidden_merges(tree: np.ndarray, cannot) -> np.ndarray:
    """``[M - 1] bool``: the merges of ``tree`` (scipy linkage rows) that put the two photos of a cannot-link into
    one cluster: each pair's lowest common ancestor and every merge above it."""
    m = len(tree) + 1
    parent = np.full(2 * m - 1, -1, np.int64)
    children = tree[:, :2].astype(np.int64)
    parent[children[:, 0]] = np.arange(m, 2 * m - 1)
    parent[children[:, 1]] = np.arange(m, 2 * m - 1)
    forbid = np.zeros(m - 1, bool)
    for a, b in _pairs(cannot, m):
        above_a = set()
        node = int(a)
        while node >= 0:
            above_a.add(node)
            node = int(parent[node])
        node = int(b)
        while node not in above_a:
            node = int(parent[node])
        if node >= m:  # a == b has no merge joining them (check_links rejects it anyway)
            forbid[node - m] = True
    for r in range(m - 1):  # a merge row's parent comes later in Z: one pass up carries every mark to the root
        if forbid[r] and parent[m + r] >= 0:
            forbid[parent[m + r] - m] = True
    return forbid


def _cut(prob: np.ndarray, method: str, cut: float, cannot: np.ndarray) -> np.ndarray:
    tree = linkage_tree(prob, method)
    return cut_tree(tree, cut, forbidden_merges(tree, cannot) if len(cannot) else None)


def cluster_with_links(prob: np.ndarray, method: str, cut: float, edge_cut: float | None = None, must=None,
                       cannot=None) -> np.ndarray:
    """``cluster_matrix(prob, method, cut, edge_cut)`` that honours the links: ``[M] int64`` labels in which every
    ``must: [K, 2]`` row pair shares a label and every ``cannot: [L, 2]`` pair does not. Raises LinkError on
    contradicting links."""
    prob = constrain(prob, must, cannot)
    m = len(prob)
    must, cannot = _pairs(must, m), _pairs(cannot, m)
    if m < 2:
        return np.zeros(m, np.int64)
    if method == "components":
        if edge_cut is None:
            raise ValueError("method='components' needs edge_cut")
        comp = _components(prob, edge_cut)
        labels = np.zeros(m, np.int64)
        offset = 0
        for c in np.unique(comp):
            rows = np.flatnonzero(comp == c)
            if len(rows) == 1:
                labels[rows] = offset
                offset += 1
                continue
            local = np.full(m, -1, np.int64)
            local[rows] = np.arange(len(rows))
            inside = cannot[(local[cannot[:, 0]] >= 0) & (local[cannot[:, 1]] >= 0)] if len(cannot) else cannot
            labels[rows] = offset + _cut(prob[np.ix_(rows, rows)], "average", cut, local[inside])
            offset += len(rows)
    else:
        labels = _cut(prob, method, cut, cannot)
    labels = _first_seen(labels)
    assert (labels[must[:, 0]] == labels[must[:, 1]]).all(), "a must-link was not honoured"
    assert (labels[cannot[:, 0]] != labels[cannot[:, 1]]).all(), "a cannot-link was not honoured"
    return labels


def index_links(image_ids, links: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray]:
    """``(must [K, 2], cannot [L, 2])`` row indices into ``image_ids`` of the links whose two photos both lie in it.

    ``links``: columns ``a``, ``b`` (image_ids) and ``same`` (bool), as kit/review/decisions.py gives them; links
    with a photo outside ``image_ids`` are left out (another dataset's).
    """
    if links is None or not len(links):
        return np.zeros((0, 2), np.int64), np.zeros((0, 2), np.int64)
    pos = pd.Series(np.arange(len(image_ids)), index=pd.Index(np.asarray(image_ids, dtype=object)))
    inside = links["a"].isin(pos.index) & links["b"].isin(pos.index)
    part = links[inside]
    pairs = np.stack([pos.loc[part["a"]].to_numpy(), pos.loc[part["b"]].to_numpy()], 1).astype(np.int64)
    same = part["same"].to_numpy(bool)
    return pairs[same].reshape(-1, 2), pairs[~same].reshape(-1, 2)
