"""Provenance of a submission: its name, its sidecar JSON, and the one-line message `make upload` sends.

``record_submission`` (``kit submit --provenance DIR``, ``make submit``) names a submission
``<UTC timestamp>-<config>-<local score>.csv`` and writes a sidecar JSON beside it: the merged config, the kit
version and git commit, the sha1 of every weights file, the validation metrics. The local score is the competition
metric of ``kit validate`` (an open-set split of the labelled rows; see ``local_validation``): it is computed from
the competition's own labelled images, never from a solution.csv. Both tasks (2025 identification, 2026
clustering) come through kit.pipeline; ``upload_message`` reads the sidecar back for ``kaggle competitions submit``.
"""

from __future__ import annotations

import datetime as dt
import math
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..io import safe_file_name
from ..schema import CLUSTERING, NEW_INDIVIDUAL
from .base import REPO_ROOT

if TYPE_CHECKING:
    import pandas as pd


def git_info(root: Path = REPO_ROOT) -> dict | None:
    """{commit, dirty} of the checkout the kit runs from, else the one its wheel was built from, else None."""
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        try:  # an installed wheel from `make kaggle-dataset` carries the commit it was built from
            from .._build import GIT

            return GIT
        except ImportError:
            return None
    return {"commit": commit, "dirty": bool(status.strip())}


def weight_hashes(conf: dict, plan=None) -> dict:
    """Every weights file a run with ``conf`` uses, with its sha1.

    Returns {"embed": the first descriptor's {model, weights_source, weights_id}, "descriptors": [that, for each
    global descriptor]} (weights_id: kit.embed's sha1 of the file, or the hub id for hub weights), plus "rerank":
    {matcher: {extractor: {file, sha1}, matcher: {file, sha1}}, or {opencv: version} for RootSIFT} for each
    matcher of ``plan`` (kit.pipeline.Plan; none when local matching is off).
    """
    from ..cache import file_hash
    from ..embed import load_descriptor
    from ..pipeline.descriptors import sections

    descs = []
    for sec in sections(conf["embed"], verbose=False):
        d = load_descriptor(sec)
        descs.append({"model": d.name, "weights_source": d.weights_source, "weights_id": d.weights_id})
    out: dict = {"embed": descs[0], "descriptors": descs}
    for scorer in getattr(plan, "scorers", []):
        from .. import rerank

        if scorer.family == "sift":
            import cv2

            out.setdefault("rerank", {})[scorer.name] = {"opencv": cv2.__version__}
            continue
        rc = rerank.rerank_conf({**conf["rerank"], "extractor": scorer.name})
        spec = rerank.EXTRACTORS[scorer.name]
        files = {"extractor": rerank.resolve_weights(spec.weights, rc["extractor_weights"], rc["allow_download"]),
                 "matcher": rerank.resolve_weights(spec.matcher, rc["matcher_weights"], rc["allow_download"])}
        out.setdefault("rerank", {})[scorer.name] = {k: {"file": str(p), "sha1": file_hash(p)}
                                                     for k, p in files.items()}
    return out


def local_validation(meta, conf: dict, task: str = "auto", plan=None) -> dict:
    """The local score of a config on a competition: ``kit validate``'s headline number for the submitted pipeline.

    The labelled rows are split open-set (``validate`` section: whole identities held out as unknowns, a share
    of the known ones' images as queries); the pipeline sees the split's queries without labels and is scored
    against the held-out labels: the AnimalCLEF25 score (mean over datasets of sqrt(BAKS x BAUS)) for 2025, the
    mean ARI for 2026. ``plan``: the competition's local-matching plan, the one the submission used (made here
    when not given). No solution.csv is read.
    Returns {"value": float | None, "pipeline": str, "metrics": the validation result, "how": str}.
    """
    from .. import pipeline

    task = pipeline.task_of(meta, task)
    plan = plan or pipeline.plan_matching(meta, conf)
    result, _ = pipeline.validate(meta, conf, task, plan)
    value, what = pipeline.headline(result, plan, task)
    metric = "mean ARI" if task == CLUSTERING else "AnimalCLEF25 score"
    return {"value": value, "pipeline": what, "metrics": result,
            "how": f"kit validate: {metric} on an open-set split of the labelled rows "
                   f"(validate: {conf['validate']}); no solution.csv is read"}


def config_name(config_path: str | Path | None) -> str:
    """The config's file stem, made safe for a file name ("defaults" when no file was given)."""
    stem = Path(config_path).stem if config_path else "defaults"
    return safe_file_name(stem, "config", keep="_.")


def record_name(config_path: str | Path | None, score: float | None, when: dt.datetime | None = None) -> str:
    """``<YYYYmmdd-HHMMSS UTC>-<config>-<local score, 4 decimals>.csv``."""
    when = when or dt.datetime.now(dt.timezone.utc)
    shown = "nan" if score is None or math.isnan(score) else f"{score:.4f}"
    return f"{when.strftime('%Y%m%d-%H%M%S')}-{config_name(config_path)}-{shown}.csv"


def record_submission(meta, conf: dict, config_path: str | Path | None, folder: str | Path,
                      pred, details: dict, task: str = "auto", plan=None, decisions: dict | None = None,
                      local: dict | None = None) -> tuple[Path, "pd.DataFrame", dict]:
    """Validate, then write ``folder/<timestamp>-<config>-<score>.csv`` and its sidecar JSON (either task).

    ``pred``/``details``: what pipeline.submit returned for ``meta`` with ``plan`` (the local-matching plan, so the
    sidecar's local score describes the submitted pipeline). ``decisions``: the human decisions applied to ``pred``
    (kit.review's ``Decisions.summary()``: each file with its sha1), recorded in the sidecar; the local score is
    the pipeline's own (validation has no human decisions). Returns (csv path, the submission as
    written, sidecar). The CSV is written through submit.write_submission (validated, atomic); the sidecar after it
    (a sidecar that cannot be written takes its CSV away again: no record without its provenance). ``local``:
    local_validation's result when already computed, so writing the record elsewhere does not validate again.
    """
    from ..io import write_json
    from ..submit import write_submission

    when = dt.datetime.now(dt.timezone.utc)
    local = local if local is not None else local_validation(meta, conf, task, plan)
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
        "weights": weight_hashes(conf, plan),
        "local_matching": None if plan is None else {"matchers": plan.names, "shortlist": plan.topk,
                                                     "pairs_estimated": plan.pairs, "plan": plan.why},
        "local_score": {k: local[k] for k in ("value", "pipeline", "how")},
        "decisions": decisions,
        "validation": local["metrics"],
        # per dataset, the scalars of the open-set calibration (tau, its held-out score estimate, ...)
        "calibration": {name: {k: v for k, v in d.items() if isinstance(v, (str, bool, int, float, type(None)))
                               or (hasattr(v, "item") and getattr(v, "ndim", 1) == 0)}
                        for name, d in details.items()},
        "predictions": ({"rows": int(len(out)), "clusters": int(out["cluster"].nunique())} if "cluster" in out
                        else {"rows": int(len(out)), "new_individual": int((out["identity"] == NEW_INDIVIDUAL).sum())}),
    }
    try:
        write_json(sidecar, sidecar_path(path))
    except OSError:
        path.unlink(missing_ok=True)
        raise
    return path, out, sidecar


def sidecar_path(csv: str | Path) -> Path:
    """The sidecar JSON of a submission CSV: the same name, ending in .json."""
    return Path(csv).with_suffix(".json")


def upload_message(sidecar: dict) -> str:
    """One-line Kaggle submission message: config, kit version and commit, local score."""
    git = sidecar.get("git") or {}
    commit = (git.get("commit") or "no-git")[:10] + ("+dirty" if git.get("dirty") else "")
    local = sidecar["local_score"]
    score = "n/a" if local["value"] is None else f"{local['value']:.4f}"
    return (f"{sidecar['config_name']} | kit {sidecar['kit_version']} {commit} | local {score} "
            f"({local['pipeline']}) | embed {sidecar['weights']['embed']['weights_id'][:10]}")
