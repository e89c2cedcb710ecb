"""The sub-centre ArcFace loss: a head over the training identities, and its logits as a plain function.

Only training uses it; the checkpoint keeps the backbone and the neck, never the head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def arcface_logits(cos: torch.Tensor, labels: torch.Tensor, margin: float, scale: float) -> torch.Tensor:
    """ArcFace logits: ``scale * cos(theta_y + margin)`` for each row's true class, ``scale * cos(theta_j)``
    for the others.

    cos: [B, C] cosine between each embedding and each class centre; labels: [B] int64 class index.
    Where ``theta_y + margin > pi`` the angle has no room for the margin (cos would rise again with
    theta), and the logit is ``cos(theta_y) - margin * sin(margin)`` instead (InsightFace's rule: still
    decreasing in theta, with a penalty). Returns [B, C] float32 (float64 for float64 input).
    """
    cos = _at_least_fp32(cos).clamp(-1.0 + 1e-6, 1.0 - 1e-6)  # keeps d/dcos of sqrt(1 - cos^2) finite
    target = cos.gather(1, labels[:, None])  # [B, 1] cos(theta_y)
    sin = (1.0 - target * target).sqrt()
    phi = target * math.cos(margin) - sin * math.sin(margin)  # cos(theta_y + m)
    phi = torch.where(target > math.cos(math.pi - margin), phi, target - margin * math.sin(margin))
    return scale * cos.scatter(1, labels[:, None], phi)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))  # half -> float32; float64 stays


class ArcFaceHead(nn.Module):
    """Sub-centre ArcFace over ``n_classes`` identities: ``[B, D]`` embeddings -> ``[B, C]`` logits.

    ``weight``: [C * subcenters, D]; rows ``c * subcenters ... c * subcenters + subcenters - 1`` are the
    centres of class c, and a class's cosine is that of its nearest centre (subcenters=1: plain ArcFace).
    ``margin`` is an attribute so a schedule can change it between steps.
    """

    def __init__(self, dim: int, n_classes: int, subcenters: int = 1, scale: float = 30.0, margin: float = 0.4):
        super().__init__()
        self.n_classes, self.subcenters, self.scale, self.margin = n_classes, subcenters, scale, margin
        self.weight = nn.Parameter(torch.empty(n_classes * subcenters, dim))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        """[B, C] float32 (at least): cosine of each embedding to its nearest centre of each class."""
        emb = _at_least_fp32(emb)
        cos = F.linear(F.normalize(emb, dim=1), F.normalize(self.weight.to(emb.dtype), dim=1))
        return cos.view(len(emb), self.n_classes, self.subcenters).amax(dim=2)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return arcface_logits(self.cosine(emb), labels, self.margin, self.scale)
