"""Pair scores: what local matching says about photo pairs, each pair matched once.

``score_pairs`` runs any scorer (kit.rerank.scorers) over directed pairs through a cache keyed by (scorer spec,
photo pair), extracting features only for photos a new pair uses; ``geometric_inliers`` counts the matches one
geometric model explains (RANSAC); ``identity_weighted_conf`` discounts keypoints that match many identities
(background); ``orientation_pair_mask`` marks opposite flanks.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..cache import image_key, load_shards, spec_hash, write_shard
from ..schema import flank


def _have_cv2() -> bool:
    return importlib.util.find_spec("cv2") is not None


def geometric_inliers(kpts0: np.ndarray, kpts1: np.ndarray, matches: np.ndarray, method: str = "auto",
                      model: str = "homography", threshold: float = 8.0, seed: int = 0) -> int:
    """Number of a pair's matches consistent with one geometric model (RANSAC), 0 below the minimal sample.

    ``kpts0: [B0, 2]``, ``kpts1: [B1, 2]`` px, ``matches: [B0]`` int (-1 = unmatched). ``method``: "opencv"
    (cv2 USAC_MAGSAC), "kornia" (kornia.geometry.ransac.RANSAC), "auto" = opencv when installed else kornia.
    ``model``: "homography" | "affine" | "fundamental"; ``threshold``: inlier error in px of the resized photo.
    """
    sel = matches > -1
    p0 = np.ascontiguousarray(kpts0[sel], np.float64)
    p1 = np.ascontiguousarray(kpts1[matches[sel]], np.float64)
    minimal = {"homography": 4, "affine": 3, "fundamental": 8}[model]
    if len(p0) <= minimal:
        return 0
    if method == "auto":
        method = "opencv" if _have_cv2() else "kornia"
    if method == "opencv":
        import cv2

        if model == "homography":
            _, mask = cv2.findHomography(p0, p1, cv2.USAC_MAGSAC, threshold)
        elif model == "affine":
            _, mask = cv2.estimateAffine2D(p0, p1, method=cv2.USAC_MAGSAC, ransacReprojThreshold=threshold)
        else:
            _, mask = cv2.findFundamentalMat(p0, p1, cv2.USAC_MAGSAC, threshold, 0.999)
        return 0 if mask is None else int(mask.sum())
    from kornia.geometry.ransac import RANSAC

    ransac = RANSAC("fundamental_8pt" if model == "fundamental" else model, inl_th=threshold, seed=seed)
    _, inl = ransac(torch.from_numpy(p0).float(), torch.from_numpy(p1).float())
    return int(inl.sum())


def identity_weighted_conf(matches: np.ndarray, confidence: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Sum of match confidences per pair, each query keypoint weighted by 1 / (identities it matched).

    One query against its K shortlisted gallery photos: ``matches: [K, B] int`` (-1 = none), ``confidence: [K, B]``,
    ``labels: [K]`` the gallery identities. Background (grass, fences, enclosure walls) recurs across animals, so a
    keypoint that matches photos of 5 identities counts 1/5 in each; an individual's coat pattern matches only its
    own identity's photos and keeps weight 1. Returns ``[K] float32``.
    """
    hit = (matches > -1).astype(np.float32)  # [K, B]
    _, code = np.unique(np.asarray(labels), return_inverse=True)
    onehot = np.zeros((len(code), code.max() + 1 if len(code) else 0), np.float32)
    onehot[np.arange(len(code)), code] = 1.0
    n_ids = ((onehot.T @ hit) > 0).sum(0)  # [B]: distinct identities each keypoint matched
    weight = np.where(n_ids > 0, 1.0 / np.maximum(n_ids, 1), 0.0).astype(np.float32)
    return (confidence * hit * weight[None]).sum(1).astype(np.float32)


def orientation_pair_mask(query_orientation: Sequence[Any], gallery_orientation: Sequence[Any],
                          shortlist_index: np.ndarray) -> np.ndarray:
    """``[Q, K] bool``: False where one photo shows the left flank and the other the right one.

    Opposite flanks of one animal share no pattern, so matching them only drags a true pair down; such pairs keep
    their global score. Orientation strings containing "left" / "right" count as that flank; anything else
    (front, top, missing) pairs with everything.
    """
    qs, gs = flank(query_orientation), flank(gallery_orientation)
    idx = np.asarray(shortlist_index)
    g = np.where(idx >= 0, gs[np.clip(idx, 0, None)], 0)
    return ~((qs[:, None] > 0) & (g > 0) & (qs[:, None] != g))


# ------------------------------------------------------------------------------------------------------------------
# Pair scores of any scorer, each pair matched once (a cache keyed by scorer spec and photo pair)
# ------------------------------------------------------------------------------------------------------------------


def pair_keys(spec: str, keys_a: Sequence[str], keys_b: Sequence[str]) -> list[str]:
    """Cache keys of directed photo pairs: (scorer spec hash, image key of a, image key of b)."""
    return [hashlib.sha1(f"{spec}|{a}|{b}".encode()).hexdigest() for a, b in zip(keys_a, keys_b)]


def score_pairs(scorer, paths_a: Sequence[str], paths_b: Sequence[str], pairs: np.ndarray,
                cache_dir: Path | None = None, memo: dict | None = None, progress: str = "") -> dict[str, np.ndarray]:
    """``{column: [P] float32}`` of a scorer (kit.rerank.scorers) for ``pairs: [P, 2] int64`` (row of paths_a, row
    of paths_b), read as from the first photo.

    Only pairs neither cache holds are matched, each unordered pair once: its reverse direction is stored too, so a
    later (b, a) is free. ``cache_dir``: the cache root (``<cache_dir>/pairs/<spec>``); ``memo``: an in-memory dict
    used instead when the disk cache is off. Features are extracted (and cached) only for photos a new pair uses.
    ``scorer.pairs_matched`` counts the unordered pairs this scorer really matched (tests assert on it).
    """
    from tqdm.auto import tqdm

    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    cols = list(scorer.columns)
    if not len(pairs):
        return {c: np.zeros(0, np.float32) for c in cols}
    spec = spec_hash(scorer.cache_spec())
    ka, kb = [image_key(p) for p in paths_a], [image_key(p) for p in paths_b]
    want = pair_keys(spec, [ka[i] for i in pairs[:, 0]], [kb[j] for j in pairs[:, 1]])
    folder = None if cache_dir is None else Path(cache_dir) / "pairs" / spec
    have: dict[str, dict[str, float]] = {}
    if folder is not None:
        row_of, arrays = load_shards(folder)
        have = {k: row_of[k] for k in want if k in row_of}
    elif memo is not None:
        have = {k: memo[k] for k in want if k in memo}
    todo = np.array(sorted({i for i, k in enumerate(want) if k not in have}), np.int64)
    # one orientation per unordered pair: the reverse of an earlier pending pair is not matched again
    seen, first = set(), []
    for i in todo:
        a, b = ka[pairs[i, 0]], kb[pairs[i, 1]]
        if (b, a) not in seen:
            seen.add((a, b))
            first.append(i)
    first = np.array(first, np.int64)
    new_keys, new_vals = [], {c: [] for c in cols}
    step = 4096  # pairs per saved shard: an interrupted run keeps what it matched
    for s in tqdm(range(0, len(first), step), desc=progress or f"{scorer.name} pairs", unit_scale=step,
                  disable=len(first) <= step, leave=False):
        chunk = pairs[first[s:s + step]]
        ua, ub = np.unique(chunk[:, 0]), np.unique(chunk[:, 1])
        fa = scorer.extract([paths_a[i] for i in ua], cache_dir)
        fb = scorer.extract([paths_b[j] for j in ub], cache_dir)
        local = np.stack([np.searchsorted(ua, chunk[:, 0]), np.searchsorted(ub, chunk[:, 1])], 1)
        res = scorer.score(fa, fb, local)
        scorer.pairs_matched = getattr(scorer, "pairs_matched", 0) + len(chunk)
        fwd = pair_keys(spec, [ka[i] for i in chunk[:, 0]], [kb[j] for j in chunk[:, 1]])
        rev = pair_keys(spec, [kb[j] for j in chunk[:, 1]], [ka[i] for i in chunk[:, 0]])
        keys = fwd + rev
        vals = {c: np.r_[res[c], res[f"{c}_rev"]].astype(np.float32) for c in cols}
        if folder is not None:
            write_shard(folder, keys, vals)
        elif memo is not None:
            memo.update({k: {c: float(vals[c][t]) for c in cols} for t, k in enumerate(keys)})
        new_keys += keys
        for c in cols:
            new_vals[c].append(vals[c])
    fresh = {k: t for t, k in enumerate(new_keys)}
    new = {c: np.concatenate(v) if v else np.zeros(0, np.float32) for c, v in new_vals.items()}
    out = {c: np.empty(len(pairs), np.float32) for c in cols}
    for i, k in enumerate(want):
        for c in cols:
            if k in fresh:
                out[c][i] = new[c][fresh[k]]
            elif folder is not None:
                out[c][i] = arrays[c][have[k]]
            else:
                out[c][i] = have[k][c]
    return out
