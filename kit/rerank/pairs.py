"""Pair scores: what local matching says about photo pairs, each pair matched once.

``score_pairs`` runs any scorer (kit.rerank.scorers) over directed pairs through a cache keyed by (scorer spec,
photo pair), extracting features only for photos a new pair uses; ``geometric_inliers`` counts the matches one
geometric model explains (RANSAC); ``identity_weighted`` discounts keypoints that match many identities
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
    of paths_b), read as from the first photo, and ``"mask": [P, B / 8] uint8`` (packed: which keypoints of the
    first photo matched).

    Only pairs neither cache holds are matched, each unordered pair once: its reverse direction is stored too, so a
    later (b, a) is free. ``cache_dir``: the cache root (``<cache_dir>/pairs/<spec>``); ``memo``: an in-memory dict
    used instead when the disk cache is off. Features are extracted (and cached) only for photos a new pair uses.
    ``scorer.pairs_matched`` counts the unordered pairs this scorer really matched (tests assert on it).
    """
    from ..progress import progress_bar

    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    cols = [*scorer.columns, "mask"]
    if not len(pairs):
        return {**{c: np.zeros(0, np.float32) for c in scorer.columns}, "mask": np.zeros((0, 0), np.uint8)}
    spec = spec_hash(scorer.cache_spec())
    ka, kb = [image_key(p) for p in paths_a], [image_key(p) for p in paths_b]
    want = pair_keys(spec, [ka[i] for i in pairs[:, 0]], [kb[j] for j in pairs[:, 1]])
    folder = None if cache_dir is None else Path(cache_dir) / "pairs" / spec
    row_of, arrays = load_shards(folder) if folder is not None else ({}, {})
    if folder is None and memo is not None:  # the memo is a cache of one run: {key: {column: value}}
        row_of = {k: k for k in want if k in memo}
    todo = [i for i, k in enumerate(want) if k not in row_of]
    # one orientation per unordered pair: the reverse of an earlier pending pair is not matched again
    seen, first = set(), []
    for i in todo:
        a, b = ka[pairs[i, 0]], kb[pairs[i, 1]]
        if (a, b) not in seen and (b, a) not in seen:
            seen.add((a, b))
            first.append(i)
    first = np.array(first, np.int64)
    new_keys, new_vals = [], {c: [] for c in cols}
    step = 4096  # pairs per saved shard: an interrupted run keeps what it matched
    bar = progress_bar(total=len(first), desc=progress or f"{scorer.name} matching", unit="pair", unit_scale=True,
               disable=len(first) <= 256, leave=False)  # shows pairs/s
    # every photo a new pair needs, extracted (or read from the feature cache) once, not once per chunk
    if paths_a is paths_b:  # database x database: each photo read (or extracted) once, not once per side
        ua = ub = np.union1d(pairs[first, 0], pairs[first, 1])
        fa = fb = scorer.extract([paths_a[i] for i in ua], cache_dir) if len(first) else {}
    else:
        ua, ub = np.unique(pairs[first, 0]), np.unique(pairs[first, 1])
        fa = scorer.extract([paths_a[i] for i in ua], cache_dir) if len(first) else {}
        fb = scorer.extract([paths_b[j] for j in ub], cache_dir) if len(first) else {}
    for s in range(0, len(first), step):
        chunk = pairs[first[s:s + step]]
        res = scorer.score(fa, fb, np.stack([np.searchsorted(ua, chunk[:, 0]), np.searchsorted(ub, chunk[:, 1])], 1))
        scorer.pairs_matched = getattr(scorer, "pairs_matched", 0) + len(chunk)
        keys = (pair_keys(spec, [ka[i] for i in chunk[:, 0]], [kb[j] for j in chunk[:, 1]])
                + pair_keys(spec, [kb[j] for j in chunk[:, 1]], [ka[i] for i in chunk[:, 0]]))
        vals = {c: np.concatenate([res[c], res[f"{c}_rev"]]) for c in cols}
        vals = {c: v.astype(np.uint8 if c == "mask" else np.float32) for c, v in vals.items()}
        if folder is not None:
            write_shard(folder, keys, vals)
        elif memo is not None:
            memo.update({k: {c: vals[c][t] for c in cols} for t, k in enumerate(keys)})
        new_keys += keys
        for c in cols:
            new_vals[c].append(vals[c])
        bar.update(len(chunk))
    bar.close()
    fresh = {k: t for t, k in enumerate(new_keys)}
    new = {c: np.concatenate(v) for c, v in new_vals.items() if v}
    is_new = np.array([k in fresh for k in want], bool)
    out = {}
    for c in cols:
        ref = new[c] if c in new else (arrays[c] if folder is not None else None)
        width = ref.shape[1:] if ref is not None else np.asarray(memo[want[0]][c]).shape
        col = np.zeros((len(want), *width), np.uint8 if c == "mask" else np.float32)
        if is_new.any():
            col[is_new] = new[c][[fresh[k] for k, n in zip(want, is_new) if n]]
        if (~is_new).any():
            old = [k for k, n in zip(want, is_new) if not n]
            col[~is_new] = (arrays[c][[row_of[k] for k in old]] if folder is not None
                            else np.stack([memo[k][c] for k in old]))
        out[c] = col
    return out


def identity_weighted(masks: np.ndarray, labels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The identity-weighted match score of each query's candidates: ``[R, K] float32``.

    ``masks: [R, K, B / 8] uint8`` packed bits of the query keypoints each candidate matched (``score_pairs``),
    ``labels: [R, K]`` the candidates' identities, ``valid: [R, K] bool``. Each query keypoint counts 1 / (the
    number of identities whose photos it matched) in each of them: background (grass, fences, walls) recurs across
    animals, an individual's coat pattern matches its own identity's photos only.
    """
    out = np.zeros(valid.shape, np.float32)
    for r in range(len(masks)):
        ok = np.flatnonzero(valid[r])
        if not len(ok):
            continue
        hit = np.unpackbits(masks[r, ok], axis=1).astype(bool)  # [k, B]
        _, code = np.unique(np.asarray(labels[r, ok], dtype=object).astype(str), return_inverse=True)
        onehot = np.zeros((len(ok), code.max() + 1), np.float32)
        onehot[np.arange(len(ok)), code] = 1.0
        n_ids = (onehot.T @ hit > 0).sum(0)  # [B] identities each keypoint matched
        out[r, ok] = (hit / np.maximum(n_ids, 1)[None, :]).sum(1)
    return out
