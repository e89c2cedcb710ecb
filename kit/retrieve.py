"""Exact cosine retrieval and per-identity aggregation.

Embeddings are L2-normalised, so cosine similarity is a dot product. Top-K runs as a chunked matmul over
query and gallery blocks: memory stays at ``chunk_size x gallery_chunk`` floats whatever the sizes
(100k x 100k included). Ties break toward the lower gallery index, exactly as a stable sort would.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

GALLERY_CHUNK = 65536  # gallery rows per block; with chunk_size=4096 a block is 1 GiB of float32


def _stable_topk(block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of ``block`` [q, n], ties toward the lower column, in descending order."""
    vals, idx = torch.topk(block, k, dim=1)
    # topk picks an arbitrary member among ties at the k-th value; rows where a tie crosses the boundary
    # (rare with real embeddings) are redone with a stable sort, which keeps the lower index first.
    kth = vals[:, -1:]
    boundary = (block == kth).sum(1) != (vals == kth).sum(1)
    if boundary.any():
        rows = torch.nonzero(boundary).flatten()
        s_vals, s_idx = torch.sort(block[rows], dim=1, descending=True, stable=True)
        vals[rows], idx[rows] = s_vals[:, :k], s_idx[:, :k]
    # order equal scores by index (topk's output order among equals is unspecified)
    order = torch.argsort(idx, dim=1)
    vals, idx = torch.gather(vals, 1, order), torch.gather(idx, 1, order)
    order = torch.argsort(vals, dim=1, descending=True, stable=True)
    return torch.gather(vals, 1, order), torch.gather(idx, 1, order)


def topk_cosine(
    query: np.ndarray, gallery: np.ndarray, k: int, chunk_size: int = 4096, device: str = "cpu",
    gallery_chunk: int = GALLERY_CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` gallery rows for each query by dot product.

    query: [Q, D] float32, gallery: [N, D] float32 (L2-normalised for cosine).
    Returns scores: [Q, min(k, N)] float32 descending, index: [Q, min(k, N)] int64 into gallery.
    ``k > N`` returns all N columns (there are no more neighbours to give).
    """
    q_all = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32))
    g_all = torch.from_numpy(np.ascontiguousarray(gallery, dtype=np.float32))
    n = g_all.shape[0]
    k = min(k, n)
    scores = np.empty((len(q_all), k), np.float32)
    index = np.empty((len(q_all), k), np.int64)
    if k == 0:
        return scores, index
    dev = torch.device(device)
    g_blocks = [g_all[s:s + gallery_chunk].to(dev) for s in range(0, n, gallery_chunk)]
    for s in range(0, len(q_all), chunk_size):
        q = q_all[s:s + chunk_size].to(dev)
        best_v = best_i = None
        offset = 0
        for g in g_blocks:
            v, i = _stable_topk(q @ g.T, min(k, g.shape[0]))
            i = i + offset
            offset += g.shape[0]
            if best_v is None:
                best_v, best_i = v, i
            else:  # earlier blocks hold lower indices, so a stable merge keeps the tie rule
                v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
                order = torch.argsort(v, dim=1, descending=True, stable=True)[:, :k]
                best_v, best_i = torch.gather(v, 1, order), torch.gather(i, 1, order)
        scores[s:s + len(q)] = best_v.cpu().numpy()
        index[s:s + len(q)] = best_i.cpu().numpy()
    return scores, index


def similarity(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Full cosine matrix ``[Q, N] float32`` (for the sizes of one dataset: 2k x 13k is 100 MB)."""
    return np.ascontiguousarray(query, np.float32) @ np.ascontiguousarray(gallery, np.float32).T


def identity_scores(
    scores: np.ndarray, labels: np.ndarray, how: str = "max", m: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Aggregate image scores into identity scores.

    scores: [Q, N] float32 (query x gallery image), labels: [N] identity of each gallery image.
    how: "max" (best image of the identity) or "topm" (mean of its ``m`` best images; an identity with
    fewer images averages what it has).
    Returns identities: [I] object (sorted), id_scores: [Q, I] float32.
    """
    codes, identities = pd.factorize(np.asarray(labels, dtype=object), sort=True)
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])  # first column of each identity
    grouped = np.asarray(scores, np.float32)[:, order]
    if how == "max":
        out = np.maximum.reduceat(grouped, starts, axis=1)
    elif how == "topm":
        out = np.empty((scores.shape[0], len(identities)), np.float32)
        for j, (a, b) in enumerate(zip(starts, np.r_[starts[1:], len(order)])):
            out[:, j] = -np.sort(-grouped[:, a:b], axis=1)[:, :m].mean(axis=1)
    else:
        raise ValueError(f"retrieve.aggregate={how!r}: choose max or topm")
    return np.asarray(identities, dtype=object), out


def ranked_labels(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """[Q, k] object: gallery labels in descending score order (stable), for Rank-k accuracy."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.asarray(labels, dtype=object)[order]


# ---------------------------------------------------------------------------------------------------------
# Shortlists: the candidates local matching looks at


def dedup_shortlist(scores: np.ndarray, gallery_labels: Sequence[Any], k: int, per_identity: int) -> np.ndarray:
    """Top-k gallery photos per query with at most ``per_identity`` photos of any one identity.

    ``scores: [Q, N] float32`` (higher = closer; -inf or NaN = never shortlist), ``gallery_labels: [N]``.
    Without the cap, a top-100 can be 100 photos of one well-photographed animal, and re-ranking can then not
    lift a true match from rank 101. ``per_identity <= 0`` disables the cap. Returns ``index: [Q, k] int64``
    in descending score order (ties: lower index first), -1 in slots left empty.
    """
    scores = np.asarray(scores, np.float32)
    _, code = np.unique(np.asarray(gallery_labels), return_inverse=True)
    q, n = scores.shape
    if len(code) != n:
        raise ValueError(f"scores has {n} gallery columns but {len(code)} gallery labels were given")
    out = np.full((q, k), -1, np.int64)
    for r in range(q):
        row = np.where(np.isnan(scores[r]), -np.inf, scores[r])  # (nan_to_num would make -inf finite)
        order = np.argsort(-row, kind="stable")
        order = order[np.isfinite(row[order])]
        if per_identity > 0:
            c = code[order]
            # rank of each photo within its identity, in score order: stable sort by identity keeps score order
            by_id = np.argsort(c, kind="stable")
            starts = np.r_[0, np.flatnonzero(np.diff(c[by_id])) + 1]
            rank = np.empty(len(c), np.int64)
            rank[by_id] = np.arange(len(c)) - np.repeat(starts, np.diff(np.r_[starts, len(c)]))
            order = order[rank < per_identity]
        out[r, :min(k, len(order))] = order[:k]
    return out


