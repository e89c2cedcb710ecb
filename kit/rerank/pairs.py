"""Pair scores: what local matching says about each (query, shortlisted gallery photo) pair.

``local_scores`` turns LightGlue matches into per-pair numbers (match count, summed confidence, RANSAC inliers);
``rerank_shortlist`` runs it over a ``[Q, K]`` shortlist, extracting (and caching) features only for the photos a
pair uses; ``identity_weighted_conf`` discounts keypoints that match many identities (background);
``orientation_pair_mask`` leaves opposite flanks unmatched.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..schema import flank
from .extractors import FeatureDict
from .lightglue import LocalMatcher


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


def local_scores(query_feats: FeatureDict, gallery_feats: FeatureDict, pairs: np.ndarray, conf: dict | None = None,
                 matcher: LocalMatcher | None = None, return_matches: bool = False) -> dict[str, np.ndarray]:
    """Local-match scores of ``pairs: [P, 2] int64`` (row of query_feats, row of gallery_feats).

    Returns ``n_matches`` (matches with confidence > rerank.match_threshold) and ``sum_conf`` (their summed
    confidence), each ``[P] float32``, plus ``inliers [P] float32`` when rerank.geometric is set, and with
    ``return_matches`` also ``matches [P, B] int32`` and ``confidence [P, B] float32``. ``conf`` (the rerank
    section) builds a LocalMatcher when ``matcher`` is None; a given matcher brings its own.
    """
    matcher = matcher or LocalMatcher(conf)
    c = matcher.conf
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    m, cf = matcher.match_pairs(query_feats, gallery_feats, pairs)
    out = {"n_matches": (m > -1).sum(1).astype(np.float32), "sum_conf": cf.sum(1).astype(np.float32)}
    if c["geometric"]:
        out["inliers"] = np.array([
            geometric_inliers(query_feats["keypoints"][a], gallery_feats["keypoints"][b], m[p], c["geometric"],
                              c["geometric_model"], float(c["geometric_threshold"]), int(c["seed"]))
            for p, (a, b) in enumerate(pairs)], np.float32)
    if return_matches:
        out["matches"], out["confidence"] = m, cf
    return out


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


def rerank_shortlist(query_paths: Sequence[str], gallery_paths: Sequence[str], shortlist_index: np.ndarray,
                     conf: dict | None = None, cache_dir: Path | None = None, *,
                     gallery_labels: Sequence[Any] | None = None, pair_mask: np.ndarray | None = None,
                     query_boxes: np.ndarray | None = None, gallery_boxes: np.ndarray | None = None,
                     matcher: LocalMatcher | None = None, chunk_queries: int = 64) -> dict[str, np.ndarray]:
    """Local scores of every (query, shortlisted gallery photo) pair.

    ``shortlist_index: [Q, K] int64`` rows of gallery_paths (-1 = empty slot). ``pair_mask: [Q, K] bool``, False =
    do not match (e.g. orientation_pair_mask). Features are extracted only for the photos a pair uses, cached under
    ``cache_dir`` (the cache root, ``kit.cache.cache_root``; None = no disk cache).
    Returns ``{name: [Q, K] float32}`` with the keys of ``local_scores`` and, given ``gallery_labels: [N]``, also
    ``weighted_conf`` (identity_weighted_conf). NaN marks a pair not matched, which ``fuse`` scores by the global
    score alone.
    """
    matcher = matcher or LocalMatcher(conf)
    idx = np.asarray(shortlist_index, np.int64)
    q, k = idx.shape
    if len(query_paths) != q:
        raise ValueError(f"shortlist_index has {q} rows but {len(query_paths)} query paths were given")
    todo = idx >= 0
    if pair_mask is not None:
        todo &= np.asarray(pair_mask, bool)
    used_g = np.unique(idx[todo])
    used_q = np.flatnonzero(todo.any(1))
    names = ["n_matches", "sum_conf"] + (["inliers"] if matcher.conf["geometric"] else []) \
        + (["weighted_conf"] if gallery_labels is not None else [])
    out = {n: np.full((q, k), np.nan, np.float32) for n in names}
    if len(used_q) == 0:
        return out
    qf = matcher.extract([query_paths[i] for i in used_q], cache_dir,
                         None if query_boxes is None else np.asarray(query_boxes)[used_q])
    gf = matcher.extract([gallery_paths[i] for i in used_g], cache_dir,
                         None if gallery_boxes is None else np.asarray(gallery_boxes)[used_g])
    g_row = np.full(len(gallery_paths), -1, np.int64)
    g_row[used_g] = np.arange(len(used_g))
    labels = None if gallery_labels is None else np.asarray(gallery_labels)
    from tqdm.auto import tqdm

    # chunks of queries keep the per-pair match arrays small ([pairs, B] each) while batches stay full
    for s in tqdm(range(0, len(used_q), chunk_queries), desc="re-rank", disable=len(used_q) <= chunk_queries):
        qs = used_q[s:s + chunk_queries]
        rr, cc = np.nonzero(todo[qs])
        pairs = np.stack([s + rr, g_row[idx[qs[rr], cc]]], 1)
        res = local_scores(qf, gf, pairs, matcher=matcher, return_matches=labels is not None)
        for n in names:
            if n != "weighted_conf":
                out[n][qs[rr], cc] = res[n]
        if labels is not None:
            for r in np.unique(rr):
                sel = rr == r
                out["weighted_conf"][qs[r], cc[sel]] = identity_weighted_conf(
                    res["matches"][sel], res["confidence"][sel], labels[idx[qs[r], cc[sel]]])
    return out
