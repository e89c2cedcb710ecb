"""A metric head per dataset: a linear map of the frozen global descriptors, learned from its labelled photos.

Frozen descriptors tell individuals apart by ImageNet's (or MegaDescriptor's) notion of similarity; a head
trained with ArcFace on the dataset's own identities re-weights them towards what separates *these* animals.
Measured on held-out photos of four species (issue 18), such a head lifted R-1 1.5-2.5x over the frozen cosine.

``fit_head(x, labels, hc)`` trains one on ``x: [N, D] float32`` (the descriptors side by side, ``combine``), and
``Head.project(x) -> [N, d] float32`` (L2-normalised) maps any photo into its space. A head is deterministic
(seeded, full-batch) and cached by its inputs.

Not yet wired into the pipeline (issue 18): a head must be judged only on identities it never saw, so every
calibration split needs its own head trained on that split's gallery alone, and the calibration that does so is not
yet as honest as today's. ``bench/head.py`` measures a head on a validation split (bench/README.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

@dataclass
class Head:
    """A fitted head: ``weight [D, d] float32``; ``project`` maps ``[N, D]`` descriptors to ``[N, d]`` unit rows."""

    weight: np.ndarray
    n_identities: int
    n_photos: int

    def project(self, x: np.ndarray) -> np.ndarray:
        y = np.asarray(x, np.float32) @ self.weight
        return (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _key(x: np.ndarray, labels: np.ndarray, hc: dict) -> str:
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(x, np.float32).tobytes())
    h.update("\x1f".join(map(str, labels)).encode())
    h.update(repr(sorted((k, v) for k, v in hc.items() if k not in ("enabled", "min_identities", "device"))).encode())
    return h.hexdigest()[:20]


def fit_head(x: np.ndarray, labels: np.ndarray, hc: dict, cache_dir: Path | None = None) -> Head:
    """Train a head on ``x: [N, D] float32`` (L2-normalised descriptors) with identities ``labels: [N]``.

    Full-batch (sub-center) ArcFace over a bias-free linear map D -> ``head.dim``: ``head.steps`` AdamW steps at
    ``head.lr``, scale ``head.scale``, margin ``head.margin``, Gaussian noise of sd ``head.noise`` on the inputs
    each step (a few thousand photos memorise fast; the noise keeps the map smooth). Seeded and deterministic;
    cached under ``cache_dir/head`` by the inputs and settings.
    """
    import torch

    labels = np.asarray(labels, dtype=object)
    x = np.ascontiguousarray(x, np.float32)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "head" / f"{_key(x, labels, hc)}.npy"
        if path.is_file():
            try:
                w = np.load(path)
                if w.shape == (x.shape[1], int(hc["dim"])):  # x: the inputs, before any projection
                    return Head(w, len(set(labels)), len(x))
            except (OSError, ValueError):
                pass  # a damaged entry is recomputed and rewritten
    _, y = np.unique(labels.astype(str), return_inverse=True)
    n_id, k = int(y.max()) + 1, int(hc["subcenters"])
    # Fewer photos than dimensions: the photos span at most N directions, so the map is learned on their top
    # principal directions (uncentred, so that cosines keep their meaning) and composed back: the same head, and
    # 5-10x faster on a CPU than over all D inputs.
    basis = None
    r = int(hc["pca"])
    if 0 < r < x.shape[1]:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        basis = vt[:r].T.astype(np.float32)  # [D, r]
        x = x @ basis
    gen = torch.Generator().manual_seed(int(hc["seed"]))
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))
    proj = torch.nn.Parameter(torch.randn(x.shape[1], int(hc["dim"]), generator=gen) / np.sqrt(x.shape[1]))
    centres = torch.nn.Parameter(torch.randn(n_id * k, int(hc["dim"]), generator=gen))
    opt = torch.optim.AdamW([proj, centres], lr=float(hc["lr"]), weight_decay=float(hc["weight_decay"]))
    s, m, noise = float(hc["scale"]), float(hc["margin"]), float(hc["noise"])
    rows = torch.arange(len(yt))
    with torch.enable_grad():
        for _ in range(int(hc["steps"])):
            xi = xt + noise * torch.randn(xt.shape, generator=gen) if noise > 0 else xt
            z = torch.nn.functional.normalize(xi @ proj, dim=1)
            c = torch.nn.functional.normalize(centres, dim=1)
            cos = (z @ c.T).view(len(z), n_id, k).amax(dim=2)  # [N, I]: each identity's nearest sub-centre
            target = cos[rows, yt].clamp(-1 + 1e-6, 1 - 1e-6)
            logits = cos.scatter(1, yt[:, None], torch.cos(torch.acos(target) + m)[:, None])
            loss = torch.nn.functional.cross_entropy(s * logits, yt)
            opt.zero_grad()
            loss.backward()
            opt.step()
    w = proj.detach().numpy().astype(np.float32)
    head = Head(w if basis is None else basis @ w, n_id, len(x))
    if path is not None:
        from .io import atomic_path

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.save(fh, head.weight)
        except OSError:
            pass  # a cache that cannot be written costs a retrain next time, nothing else
    return head
