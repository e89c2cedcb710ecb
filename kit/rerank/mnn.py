"""Mutual nearest neighbours + Lowe's ratio test, for one photo against many, as batched matrix products.

The CPU-fast matcher beside LightGlue: no network, only a [K, A, B] similarity block per chunk of K gallery
photos (one matmul), its top-2 along both axes, and masks. One similarity block gives the matches of both
directions of every pair in it (the mutual set is symmetric, the ratio test is read on either side), so a
database x database pair costs one block, not two.

Descriptors are L2-normalised (RootSIFT is), so the squared distance is ``2 - 2 cos`` and the ratio test
``d1 / d2 < r`` reads ``(2 - 2 s1) < r^2 (2 - 2 s2)``, with s1, s2 the best and second-best cosines.
"""

from __future__ import annotations

import numpy as np
import torch

RATIOS = (0.85, 0.7)  # a loose and a strict ratio: two confidence levels, each its own count column
COLUMNS = ("n_matches", "n_strict", "sum_conf")  # per direction, see mnn_scores


def prepare(descriptors: np.ndarray | torch.Tensor, count: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``[N, B, D]`` padded descriptors (any float dtype) -> ``[N, B, D + 1] float32`` ready for ``mnn_scores``.

    The extra coordinate is 0 on real keypoints and -8 on padding; the query side carries 1 there, so a padded
    keypoint scores a cosine of -8, below every real one, without masking the big similarity block.
    """
    desc = torch.as_tensor(np.asarray(descriptors) if not torch.is_tensor(descriptors) else descriptors).float()
    n, b, _ = desc.shape
    pad = torch.arange(b)[None, :] >= torch.as_tensor(np.asarray(count)).reshape(-1, 1)  # [N, B]
    return torch.cat([desc, torch.where(pad, -8.0, 0.0)[..., None]], -1)


def mnn_scores(query: torch.Tensor, gallery: torch.Tensor, gallery_count: torch.Tensor,
               ratios: tuple[float, float] = RATIOS, matches: bool = False) -> dict[str, torch.Tensor]:
    """Match one photo against K others.

    ``query: [A, D + 1]`` and ``gallery: [K, B, D + 1]`` come from ``prepare`` (the query: its A real keypoints,
    no padding), ``gallery_count: [K] int64`` real keypoints of each gallery photo. Returns, for each column of
    COLUMNS and each direction, ``[K] float32``: ``"<col>"`` reads the ratio on the query's side (the query
    looking for itself in the gallery photo), ``"<col>_rev"`` on the gallery photo's side. ``n_matches``: mutual
    nearest neighbours passing the loose ratio; ``n_strict``: the strict one; ``sum_conf``: the sum of 1 - ratio
    over the loose matches. A photo with fewer than 2 keypoints on either side matches nothing (the ratio test
    needs a second best). With ``matches``, also ``"match": [K, A] int64`` (the gallery keypoint matched to each
    query keypoint, -1 = none, query side's loose matches) and ``"match_rev"`` (the same for the other side).
    """
    k, b, _ = gallery.shape
    a = query.shape[0]
    zero = torch.zeros(k, dtype=torch.float32, device=gallery.device)
    if a < 2 or k == 0:
        out = {f"{c}{s}": zero.clone() for c in COLUMNS for s in ("", "_rev")}
        if matches:
            out["match"] = out["match_rev"] = torch.full((k, a), -1, dtype=torch.int64, device=gallery.device)
        return out
    query = query.clone()
    query[:, -1] = 1.0  # meets the gallery's padding marker
    sims = torch.matmul(gallery, query.T).transpose(1, 2)  # [K, A, B]
    va, ia = sims.topk(2, dim=2)  # query side: [K, A, 2] best gallery keypoints of each query keypoint
    vb, ib = sims.topk(2, dim=1)  # gallery side: [K, 2, B] best query keypoints of each gallery keypoint
    best = ia[:, :, 0]  # [K, A]
    mutual = ib[:, 0, :].gather(1, best) == torch.arange(a, device=gallery.device)[None, :]  # [K, A]
    mutual &= (gallery_count >= 2)[:, None]

    def ratio(v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:  # d1 / d2 from cosines
        return ((2 - 2 * v1).clamp_min(0) / (2 - 2 * v2).clamp_min(1e-12)).sqrt()

    r_q = ratio(va[:, :, 0], va[:, :, 1])  # [K, A]
    r_g = ratio(vb[:, 0, :], vb[:, 1, :]).gather(1, best)  # [K, A]: the ratio at each query keypoint's match
    out = {}
    for side, r in (("", r_q), ("_rev", r_g)):
        loose = mutual & (r < ratios[0])
        out[f"n_matches{side}"] = loose.sum(1).float()
        out[f"n_strict{side}"] = (mutual & (r < ratios[1])).sum(1).float()
        out[f"sum_conf{side}"] = torch.where(loose, 1 - r, torch.zeros_like(r)).sum(1)
        if matches:
            out[f"match{side}"] = torch.where(loose, best, -1)
    return out


def mnn_reference(d0: np.ndarray, d1: np.ndarray, ratio: float) -> int:
    """Matches of one pair, the slow obvious way (the oracle ``mnn_scores`` is tested against).

    ``d0: [A, D]``, ``d1: [B, D]`` L2-normalised; a match is a pair of mutual nearest neighbours (by Euclidean
    distance) whose distance is below ``ratio`` times the distance from d0's keypoint to its second-nearest in d1.
    """
    if len(d0) < 2 or len(d1) < 2:
        return 0
    dist = np.sqrt(np.maximum(((d0[:, None, :] - d1[None, :, :]) ** 2).sum(-1), 0))  # [A, B]
    n = 0
    for i in range(len(d0)):
        order = np.argsort(dist[i], kind="stable")
        j = order[0]
        if np.argmin(dist[:, j]) == i and dist[i, j] < ratio * dist[i, order[1]]:
            n += 1
    return n
