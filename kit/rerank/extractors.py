"""Local features: one network per photo, padded to a fixed keypoint budget, cached per image.

Features come from kornia (ALIKED, DISK) or from a SuperPoint checkpoint the user supplies; they are extracted
once per image in top-k mode (a fixed keypoint budget B), padded to B and cached through kit.cache at
``<cache_dir>/local/<spec_hash(cache_spec())>``. ``LocalExtractor`` is the extraction half of
``kit.rerank.lightglue.LocalMatcher``; device, precision and decode workers come from ``kit.device.policy``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..cache import cached_compute, file_hash, image_key, spec_hash
from ..device import policy as device_policy
from ..errors import ConfigError, DataError
from .settings import rerank_conf
from .weights import EXTRACTORS, _load_checked, _torch_load, resolve_weights

FEATURES_VERSION = 1  # bump when the extraction code changes what it writes: old cache entries are then unused

FeatureDict = dict[str, np.ndarray]  # keypoints [N, B, 2] f32, descriptors [N, B, D] f16, scores [N, B] f32,
#                                       count [N] int32, image_size [N, 2] f32 (W, H of the resized image)


# ------------------------------------------------------------------------------------------------------------------
# SuperPoint (kornia has none); the layer names follow the MagicLeap checkpoint, superpoint_v1.pth
# ------------------------------------------------------------------------------------------------------------------


class SuperPoint(nn.Module):
    """SuperPoint detector and descriptor (DeTone et al. 2018); weights only from a user-supplied checkpoint.

    ``forward(image [1, 1, H, W] float32 in [0, 1])`` returns ``(keypoints [n, 2] (x, y) px, descriptors [n, 256],
    scores [n])`` for the ``max_keypoints`` strongest NMS maxima (radius 4) above ``threshold``.
    """

    def __init__(self, max_keypoints: int, threshold: float = 0.0005, nms_radius: int = 4, border: int = 4):
        super().__init__()
        self.max_keypoints, self.threshold, self.nms_radius, self.border = max_keypoints, threshold, nms_radius, border
        conv = lambda a, b, k=3: nn.Conv2d(a, b, k, 1, k // 2)  # noqa: E731
        self.conv1a, self.conv1b = conv(1, 64), conv(64, 64)
        self.conv2a, self.conv2b = conv(64, 64), conv(64, 64)
        self.conv3a, self.conv3b = conv(64, 128), conv(128, 128)
        self.conv4a, self.conv4b = conv(128, 128), conv(128, 128)
        self.convPa, self.convPb = conv(128, 256), conv(256, 65, 1)
        self.convDa, self.convDb = conv(128, 256), conv(256, 256, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, w = image.shape[-2:]
        x = F.pad(image, (0, -w % 8, 0, -h % 8))  # the encoder downsamples by 8
        for i, (first, second) in enumerate([(self.conv1a, self.conv1b), (self.conv2a, self.conv2b),
                                              (self.conv3a, self.conv3b), (self.conv4a, self.conv4b)]):
            x = F.relu(second(F.relu(first(x))))
            if i < 3:
                x = F.max_pool2d(x, 2)
        logits = self.convPb(F.relu(self.convPa(x)))  # [1, 65, H/8, W/8]; channel 64 is "no keypoint"
        heat = F.pixel_shuffle(logits.softmax(1)[:, :-1], 8)[0, 0, :h, :w]  # [H, W]
        r = self.nms_radius
        keep = heat == F.max_pool2d(heat[None, None], 2 * r + 1, 1, r)[0, 0]
        keep &= heat > self.threshold
        b = self.border
        keep[:b], keep[-b:], keep[:, :b], keep[:, -b:] = False, False, False, False
        ys, xs = torch.nonzero(keep, as_tuple=True)
        scores = heat[ys, xs]
        top = scores.argsort(descending=True)[: self.max_keypoints]
        kpts = torch.stack([xs[top], ys[top]], -1).float()
        desc_map = self.convDb(F.relu(self.convDa(x)))  # [1, 256, H/8, W/8]
        hc, wc = desc_map.shape[-2:]
        # pixel centre (x + 0.5) in the padded image, mapped onto the coarse grid with align_corners=False
        grid = (kpts + 0.5) / torch.tensor([8.0 * wc, 8.0 * hc], device=kpts.device) * 2 - 1
        desc = F.grid_sample(desc_map, grid[None, None], mode="bilinear", align_corners=False)[0, :, 0].t()
        return kpts, F.normalize(desc, dim=-1), scores[top]


# ------------------------------------------------------------------------------------------------------------------
# Decoding and extraction
# ------------------------------------------------------------------------------------------------------------------


class _ImageSet(torch.utils.data.Dataset):
    """Decodes, crops and resizes one photo per item (runs in DataLoader workers)."""

    def __init__(self, paths: Sequence[str], boxes: np.ndarray | None, resize: int | None):
        self.paths, self.boxes, self.resize = list(paths), boxes, resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        from ..data import open_image

        box = None if self.boxes is None else self.boxes[i]
        has_box = box is not None and np.isfinite(box).all()
        # JPEG draft decoding shrinks the photo before we see its size, which would move the box coordinates
        im = open_image(self.paths[i], min_side=None if has_box or not self.resize else self.resize)
        if has_box:
            x0, y0, x1, y1 = (float(v) for v in box)
            x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(im.width), x1), min(float(im.height), y1)
            if x1 - x0 < 2 or y1 - y0 < 2:
                raise DataError(f"{self.paths[i]}: crop box {box.tolist()} leaves no image inside the "
                                f"{im.width}x{im.height} photo; fix the box (x0, y0, x1, y1 in pixels) or pass NaN")
            im = im.crop((x0, y0, x1, y1))
        if self.resize:
            s = self.resize / max(im.size)
            im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BILINEAR)
        return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)  # [3, H, W] uint8


class LocalExtractor:
    """A local-feature extractor built from the ``rerank`` config section (the extraction half of LocalMatcher).

    Weights resolve when the object is built (the extractor file's hash keys the feature cache); the network
    loads on first use, so a run whose features are all cached never loads the extractor.
    """

    def __init__(self, conf: dict | None = None):
        self.conf = rerank_conf(conf)
        name = "aliked-n16" if self.conf["extractor"] == "auto" else self.conf["extractor"]  # a network: LightGlue's
        if not isinstance(name, str) or name not in EXTRACTORS:
            raise ConfigError(f"rerank.extractor={name!r}: a LocalMatcher runs one network extractor, one of "
                              f"{', '.join(EXTRACTORS)} (RootSIFT and lists go through kit.rerank.make_scorer)")
        self.conf = {**self.conf, "extractor": name}
        self.spec = EXTRACTORS[name]
        self.policy = device_policy(self.conf["device"], self.conf["amp"], self.conf["num_workers"])
        self.device = self.policy.device
        self.extractor_path = resolve_weights(self.spec.weights, self.conf["extractor_weights"],
                                              self.conf["allow_download"])
        self._extractor: nn.Module | None = None
        self._extractor_hash: str | None = None

    def cache_spec(self) -> dict:
        """Everything that changes the cached arrays; its hash names the cache folder."""
        if self._extractor_hash is None:
            self._extractor_hash = file_hash(self.extractor_path)
        return {"stage": "local_features", "version": FEATURES_VERSION, "extractor": self.conf["extractor"],
                "weights": self._extractor_hash, "max_keypoints": int(self.conf["max_keypoints"]),
                "resize": self.conf["resize"]}

    @property
    def extractor(self) -> nn.Module:
        if self._extractor is None:
            import kornia.feature as KF

            name, path, budget = self.conf["extractor"], self.extractor_path, int(self.conf["max_keypoints"])
            state = _torch_load(path)
            what = self.spec.weights.what
            if self.spec.family == "aliked":
                # detection_threshold 0 selects kornia's top-k mode: the `budget` strongest maxima
                model = KF.ALIKED(name, max_num_keypoints=budget, detection_threshold=0.0)
                model = _load_checked(model, path, state, what, derived=["dkd.hw_grid"])
            elif self.spec.family == "disk":
                model = _load_checked(KF.DISK(), path, state.get("extractor", state), what)
            else:
                model = _load_checked(SuperPoint(budget), path, state, what)
            self._extractor = model.to(self.device)
        return self._extractor

    @torch.inference_mode()
    def extract_image(self, image: torch.Tensor) -> FeatureDict:
        """Features of one image ``[3, H, W] uint8`` as arrays padded to the budget B (see FeatureDict), no N axis."""
        budget = int(self.conf["max_keypoints"])
        x = image.to(self.device, torch.float32)[None] / 255.0
        h, w = x.shape[-2:]
        if self.spec.family == "aliked":
            f = self.extractor(x)[0]
            kpts, desc, scores = f.keypoints, f.descriptors, f.keypoint_scores
        elif self.spec.family == "disk":
            f = self.extractor(x, n=budget, window_size=5, score_threshold=0.0, pad_if_not_divisible=True)[0]
            kpts, desc, scores = f.keypoints, f.descriptors, f.detection_scores
        else:
            kpts, desc, scores = self.extractor(x.mean(1, keepdim=True))
        n = min(len(kpts), budget)
        out = {
            "keypoints": np.zeros((budget, 2), np.float32),
            # float16 halves the cache (512 x 128 descriptors = 128 KB per photo); they are unit vectors, and the
            # rounding (< 5e-4) is below what bf16 matching on a GPU resolves anyway
            "descriptors": np.zeros((budget, self.spec.dim), np.float16),
            "scores": np.zeros(budget, np.float32),
            "count": np.array(n, np.int32),
            "image_size": np.array([w, h], np.float32),
        }
        out["keypoints"][:n] = kpts[:n].float().cpu().numpy()
        out["descriptors"][:n] = desc[:n].float().cpu().numpy()
        out["scores"][:n] = scores[:n].float().cpu().numpy()
        return out

    def _extract_paths(self, paths: Sequence[str], boxes: np.ndarray | None) -> FeatureDict:
        """Extract without the cache: ``paths`` in order -> FeatureDict with N = len(paths)."""
        from ..progress import progress_bar

        workers = self.policy.workers
        # starting workers costs about a second, more than decoding a few photos in this process
        loader = torch.utils.data.DataLoader(_ImageSet(paths, boxes, self.conf["resize"]), batch_size=None,
                                             num_workers=workers if len(paths) > 32 else 0)
        rows = [self.extract_image(img) for img in progress_bar(loader, desc=f"{self.conf['extractor']} features",
                                                         disable=len(paths) < 8, leave=False)]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    def extract(self, paths: Sequence[str], cache_dir: Path | None = None,
                boxes: np.ndarray | None = None) -> FeatureDict:
        """Local features of ``paths`` (in order), computing only what the cache lacks.

        ``cache_dir``: the cache root (``kit.cache.cache_root``); None = no disk cache. ``boxes``: optional
        ``[N, 4] float32`` crop ``(x0, y0, x1, y1)`` in original pixels, a NaN row = whole photo; a box is part of
        that image's cache key. Returns FeatureDict with N = len(paths).
        """
        paths = [str(p) for p in paths]
        if not paths:
            raise ValueError("extract() got no image paths")
        if boxes is not None:
            boxes = np.asarray(boxes, np.float32)
            if boxes.shape != (len(paths), 4):
                raise ValueError(f"boxes must be [N, 4] = [{len(paths)}, 4], got {list(boxes.shape)}")
        keys = [image_key(p) for p in paths]
        if boxes is not None:
            keys = [k if not np.isfinite(b).all() else hashlib.sha1(f"{k}|{b.tolist()}".encode()).hexdigest()
                    for k, b in zip(keys, boxes)]
        folder = None if cache_dir is None else Path(cache_dir) / "local" / spec_hash(self.cache_spec())

        def compute(idx: np.ndarray) -> FeatureDict:
            return self._extract_paths([paths[i] for i in idx], None if boxes is None else boxes[idx])

        return cached_compute(folder, keys, compute)

