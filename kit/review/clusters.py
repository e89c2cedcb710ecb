"""A 2026 dataset's review page, as plain data: each cluster as a grid of its photos, doubtful clusters first.

``clustering_page`` takes the submitted clusters of one dataset's test photos and their embeddings (L2-normalised,
the descriptors combined as the clustering saw them) and gives one dict per cluster: its photos (the most typical
first, the loosest last), its ``review.neighbours`` nearest other clusters (the best cosine between any two of
their photos: merge candidates), and how doubtful it is. A cluster is doubtful when one of its photos sits loosely
in it (low ``cohesion``: the least mean cosine of a photo to the others: perhaps a wrong merge) or when another
cluster lies close (high ``near``: perhaps a missed one); both are ranked among the dataset's clusters and the
worse rank counts. With answers (``kit validate --review``) the wrong merges come first ("impure": photos of
several individuals), then the missed merges ("split": an individual spread over several clusters).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .identification import PhotoIndex, _pct_rank

STATUS_ORDER = ("impure", "split", "correct")
BLOCK = 512  # photos per similarity block ([512, M] floats at a time)


def nearest_clusters(emb: np.ndarray, codes: np.ndarray, n_clusters: int) -> np.ndarray:
    """``[C, C] float32``: the best cosine between a photo of cluster c and one of cluster d (-inf on the diagonal).

    ``emb: [M, D]`` L2-normalised; ``codes: [M]`` cluster numbers 0 .. C-1. Computed in blocks of photos sorted by
    cluster: memory [BLOCK, M] + [C, C].
    """
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    col_starts = np.flatnonzero(np.r_[True, np.diff(sorted_codes) != 0])  # each cluster's first column
    col_codes = sorted_codes[col_starts]
    e = np.asarray(emb, np.float32)[order]
    best = np.full((n_clusters, n_clusters), -np.inf, np.float32)
    for a in range(0, len(e), BLOCK):
        blk = e[a:a + BLOCK] @ e.T  # [b, M]
        by_col = np.full((len(blk), n_clusters), -np.inf, np.float32)
        by_col[:, col_codes] = np.maximum.reduceat(blk, col_starts, axis=1)
        rc = sorted_codes[a:a + BLOCK]
        starts = np.flatnonzero(np.r_[True, np.diff(rc) != 0])
        seg = np.maximum.reduceat(by_col, starts, axis=0)  # [segments, C]
        best[rc[starts]] = np.maximum(best[rc[starts]], seg)
    np.fill_diagonal(best, -np.inf)
    return best


def clustering_page(dataset: str, photos_frame: pd.DataFrame, labels, emb: np.ndarray, rc: dict,
                    truth=None) -> dict:
    """One dataset's page data (photos as paths).

    ``photos_frame`` (M rows: image_id, filepath), ``labels [M]`` the submitted cluster names, ``emb [M, D]``
    L2-normalised; ``rc``: the ``review`` config section; ``truth [M]`` (validate): each photo's identity.
    """
    labels = np.asarray(labels, dtype=object)
    m = len(labels)
    codes, names = pd.factorize(labels, sort=False)
    n = len(names)
    emb = np.asarray(emb, np.float32)
    assert emb.shape[0] == m == len(photos_frame)
    near = nearest_clusters(emb, codes, n) if n > 1 else np.full((n, n), -np.inf, np.float32)
    ids, paths = photos_frame["image_id"].to_numpy(dtype=object), photos_frame["filepath"].to_numpy(dtype=object)
    truth = None if truth is None else np.asarray(truth, dtype=object)
    members, cohesion = [], np.full(n, np.nan)
    for c in range(n):
        rows = np.flatnonzero(codes == c)
        if len(rows) > 1:
            sim = emb[rows] @ emb[rows].T
            typical = (sim.sum(1) - np.diag(sim)) / (len(rows) - 1)  # each photo's mean cosine to the others
            rows = rows[np.argsort(-typical, kind="stable")]
            cohesion[c] = float(typical.min())
        members.append(rows)
    nearest = near.max(axis=1) if n > 1 else np.full(n, np.nan)
    r_coh, r_near = _pct_rank(cohesion), _pct_rank(-nearest)
    uncertainty = 1.0 - np.minimum(r_coh, r_near)
    status = None
    if truth is not None:
        spread = pd.Series(codes).groupby(truth).nunique()  # clusters each individual is spread over
        status = ["impure" if len(set(truth[r])) > 1 else "split" if spread[truth[r[0]]] > 1 else "correct"
                  for r in members]
        order = np.lexsort((-uncertainty, [STATUS_ORDER.index(s) for s in status]))
    else:
        order = np.argsort(-uncertainty, kind="stable")
    position = np.empty(n, np.int64)
    position[order] = np.arange(n)  # a cluster's place on the page
    photos = PhotoIndex()
    k = min(int(rc["neighbours"]), n - 1)
    clusters = []
    for c in order:
        rows = members[c]
        nb = np.argsort(-near[c], kind="stable")[:k] if k > 0 else []
        entry = {"cluster": names[c], "members": [], "cohesion": None if cohesion[c] != cohesion[c]
                 else round(float(cohesion[c]), 4), "near": None if not np.isfinite(nearest[c])
                 else round(float(nearest[c]), 4), "uncertainty": round(float(uncertainty[c]), 4),
                 "reason": ("a loosely attached photo" if r_coh[c] <= r_near[c] else "a close cluster nearby"),
                 "neighbours": [{"index": int(position[d]), "cluster": names[d], "sim": round(float(near[c, d]), 4)}
                                for d in nb if np.isfinite(near[c, d])]}
        for r in rows:
            entry["members"].append({"image_id": ids[r], "photo": photos(paths[r]),
                                     **({"truth": truth[r]} if truth is not None else {})})
        if status is not None:
            entry["status"] = status[c]
            for nbr in entry["neighbours"]:
                nbr["same_truth"] = bool(set(truth[rows]) & set(truth[members[int(order[nbr["index"]])]]))
        clusters.append(entry)
    return {"task": "clustering", "dataset": dataset, "photos": photos.paths, "clusters": clusters,
            "has_truth": truth is not None,
            "counts": {"photos": m, "clusters": n, "singletons": int(sum(len(r) == 1 for r in members)),
                       **({s: int(sum(x == s for x in status)) for s in STATUS_ORDER} if status else {})}}
