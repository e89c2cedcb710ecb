"""RootSIFT local features (OpenCV), the CPU-fast extractor matched by kit.rerank.mnn.

SIFT on the photo resized to ``rerank.resize`` px on its long side, the ``rerank.max_keypoints`` strongest
keypoints (by detector response), each descriptor L1-normalised and square-rooted (RootSIFT: Hellinger distance
on the histograms, which matches better than raw SIFT's Euclidean one). Written in the same padded FeatureDict
as the network extractors and cached the same way, so the pair scoring above does not care which one ran.

Measured on nyala (bench/rerank.py): about 12-17 photos/s extraction on 2 CPU cores, no network, no weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..cache import cached_compute, image_key, spec_hash
from .extractors import FeatureDict

SIFT_VERSION = 2  # bump when what this module writes changes: old cache entries are then unused
DIM = 128


def rootsift_image(gray: np.ndarray, budget: int) -> FeatureDict:
    """RootSIFT of one ``[H, W] uint8`` image, padded to ``budget`` keypoints (FeatureDict rows, no N axis)."""
    import cv2

    cv2.setNumThreads(1)  # one photo per process or worker: OpenCV's own threads would fight them for cores
    kps, des = cv2.SIFT_create(nfeatures=budget).detectAndCompute(gray, None)
    out = {"keypoints": np.zeros((budget, 2), np.float32), "descriptors": np.zeros((budget, DIM), np.float16),
           "scores": np.zeros(budget, np.float32), "count": np.array(0, np.int32),
           "image_size": np.array([gray.shape[1], gray.shape[0]], np.float32)}
    if des is None or not len(kps):
        return out  # a blank or tiny photo: no keypoints, a zero row that matches nothing
    response = np.array([k.response for k in kps], np.float32)
    order = np.argsort(-response, kind="stable")[:budget]
    des = des[order].astype(np.float32)
    des = np.sqrt(des / np.maximum(des.sum(1, keepdims=True), 1e-12))  # L1, then sqrt: unit L2 norm
    n = len(order)
    out["keypoints"][:n] = np.array([kps[i].pt for i in order], np.float32)
    out["descriptors"][:n] = des
    out["scores"][:n] = response[order]
    out["count"] = np.array(n, np.int32)
    return out


class _SiftSet(torch.utils.data.Dataset):
    """Decode, resize, extract: one photo's FeatureDict row per item (runs in DataLoader workers)."""

    def __init__(self, paths: Sequence[str], resize: int | None, budget: int):
        self.paths, self.resize, self.budget = list(paths), resize, budget

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> FeatureDict:
        from PIL import Image

        from ..data import open_image

        im = open_image(self.paths[i], min_side=self.resize)
        if self.resize and max(im.size) > self.resize:  # shrink only: an upscaled photo adds no keypoint worth it
            s = self.resize / max(im.size)
            im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BILINEAR)
        return rootsift_image(np.asarray(im.convert("L")), self.budget)


class SiftExtractor:
    """RootSIFT features of photos, cached per image (``<cache_dir>/local/<spec_hash(cache_spec())>``)."""

    def __init__(self, max_keypoints: int = 512, resize: int | None = 512, workers: int = 0):
        self.max_keypoints, self.resize, self.workers = int(max_keypoints), resize, workers

    def cache_spec(self) -> dict:
        """Everything that changes the cached arrays; its hash names the cache folder."""
        import cv2

        return {"stage": "local_features", "extractor": "rootsift", "version": SIFT_VERSION,
                "opencv": cv2.__version__, "max_keypoints": self.max_keypoints, "resize": self.resize}

    def _extract_paths(self, paths: Sequence[str]) -> FeatureDict:
        from ..progress import progress_bar

        loader = torch.utils.data.DataLoader(_SiftSet(paths, self.resize, self.max_keypoints), batch_size=None,
                                             num_workers=self.workers if len(paths) > 32 else 0,
                                             collate_fn=lambda row: row)
        rows = list(progress_bar(loader, desc="RootSIFT features", unit="photo", disable=len(paths) < 32, leave=False))
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    def extract(self, paths: Sequence[str], cache_dir: Path | None = None) -> FeatureDict:
        """FeatureDict of ``paths`` (in order, N = len(paths)), computing only what the cache lacks."""
        paths = [str(p) for p in paths]
        folder = None if cache_dir is None else Path(cache_dir) / "local" / spec_hash(self.cache_spec())
        return cached_compute(folder, [image_key(p) for p in paths],
                              lambda idx: self._extract_paths([paths[i] for i in idx]))
