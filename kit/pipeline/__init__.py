"""The stages wired together, for both tasks: the one place that reads the whole config.

``submit(meta, conf)`` turns a competition folder into predictions; ``validate(meta, conf)`` scores the same
pipeline on an open-set split of the folder's labelled rows. The task comes from the folder's layout
(``task_of``): 2025 (database/query) is identification, 2026 (train/test) is clustering. ``kit submit``,
``kit validate``, the Kaggle provenance and the notebooks all come through here.

- ``descriptors.py``: the global descriptors (``embed.model: auto`` picks them) and their embeddings;
- ``local.py``: the local-matching plan (matchers, shortlist length, time) and the pair scores (kit.rerank);
- ``pairs.py``: candidate pairs, their features and the pair models (kit.pairmodel): P(same individual);
- ``identification.py``: 2025, each query a known identity or ``new_individual`` (kit.openset decides);
- ``clustering.py``: 2026, test photos clustered into individuals (kit.cluster).

Each stage reads only its own config section; what it needs from the others is handed over here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import labelled_mask
from ..errors import DataError
from ..schema import CLUSTERING, IDENTIFICATION, LAYOUT_TASK
from ..splits import hide_answers, open_set_split
from . import descriptors
from .clustering import submit_clustering, validate_clustering
from .identification import final_pipeline, fit_decisions, identify, validate_identification
from .local import Plan, plan_matching
from .pairs import combine

__all__ = ["Plan", "combine", "embed_frame", "final_pipeline", "fit_decisions", "headline", "identify",
           "plan_matching", "submit", "task_of", "validate", "validation_split"]


def task_of(meta: pd.DataFrame, task: str = "auto") -> str:
    """The task of a run on ``meta``: ``task`` itself, or (``"auto"``) the one of the folder's layout.
    A task that does not fit the layout is a DataError saying which one does."""
    layout = meta.attrs.get("layout", "2025")
    where = meta.attrs.get("root", "the competition")
    own = LAYOUT_TASK[layout]
    if task == "auto" or task == own:
        return own
    if task == CLUSTERING:
        raise DataError(
            f"{where} is an AnimalCLEF 2025 competition (split database/query): clustering needs the 2026 layout "
            "(split train/test). Run it with --task identification (the default for this folder), or make a 2026 "
            "folder with `kit import-folders --layout 2026` / `kit synth --layout 2026`.")
    if task == IDENTIFICATION:
        raise DataError(
            f"{where} is an AnimalCLEF 2026 competition (split train/test): identification needs the 2025 layout "
            "(split database/query). Run it with --task clustering (the default for this folder).")
    raise DataError(f"--task {task!r}: choose auto, {IDENTIFICATION} or {CLUSTERING}")


def embed_frame(df: pd.DataFrame, conf: dict) -> dict[str, np.ndarray]:
    """{descriptor: [len(df), D] float32} L2-normalised embeddings of ``df.filepath``, row-aligned, cached."""
    return descriptors.embed_all(df, conf)


def submit(meta: pd.DataFrame, conf: dict, task: str = "auto", plan: Plan | None = None,
           links: pd.DataFrame | None = None) -> tuple[pd.DataFrame, dict]:
    """Predictions for every unlabelled row of a competition (data.read_competition), and per-dataset details.

    identification: ``image_id,identity`` (query order) of the submitted pipeline (``final_pipeline``), details
    {dataset: that pipeline's open-set calibration and evidence}; clustering: ``image_id,cluster`` (test order),
    details {dataset: method, cut, held-out ARI, n_clusters, ...}. ``plan``: the local-matching plan
    (``plan_matching(meta, conf)`` when not given). ``links`` (clustering only): human must-/cannot-links between
    test photos (columns a, b, same; kit/review/decisions.py) that the clustering honours.
    """
    task = task_of(meta, task)
    plan = plan or plan_matching(meta, conf)
    embs = embed_frame(meta, conf)
    lab = labelled_mask(meta)
    if task == CLUSTERING:
        return submit_clustering(meta, embs, lab, conf, plan, links=links)
    db, q = meta[lab].reset_index(drop=True), meta[~lab].reset_index(drop=True)
    preds, details = identify(db, q, {d: e[lab] for d, e in embs.items()}, {d: e[~lab] for d, e in embs.items()},
                              conf, plan)
    final = final_pipeline(plan)
    return preds[final], {name: d.get(final, {}) for name, d in details.items()}


def validation_split(meta: pd.DataFrame, conf: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """``(db, q, solution, embs)``: the open-set split of the labelled rows that ``validate`` scores on.

    Whole identities (about ``validate.n_unknown`` images per dataset) become unknown queries, and
    ``validate.query_fraction`` of each other identity's images known ones; ``q`` has lost its labels (the answer
    key is ``solution``). Column ``_row`` of ``db`` and ``q`` indexes each array of ``embs`` ({descriptor:
    [N, D]}, the labelled rows' embeddings).
    """
    vc = conf["validate"]
    lab = meta[labelled_mask(meta)].reset_index(drop=True)
    if lab.empty:
        raise DataError(f"{meta.attrs.get('root', 'the competition')}: validation needs labelled rows "
                        "(database or train identities); this competition has none")
    embs = embed_frame(lab, conf)
    split = open_set_split(lab.assign(_row=np.arange(len(lab))), n_unknown=vc["n_unknown"],
                           query_fraction=vc["query_fraction"], seed=vc["seed"])
    db, q, solution = hide_answers(split)
    return db, q, solution, embs


def validate(meta: pd.DataFrame, conf: dict, task: str = "auto", plan: Plan | None = None) -> tuple[dict, dict]:
    """The submitted pipeline scored on ``validation_split``: (result, info).

    identification: result {dataset: {pipeline: {R-1, R-5, R-20, mAP, shortlist_recall, BAKS, BAUS, score}}};
    clustering: {dataset: {ARI, n_clusters, n_identities, n_images, method, cut, heldout_ARI[, ARI_fallback]},
    "mean": {ARI}}. info: {"details", "solution", "predictions", "plan", "db", "q"} for reports and review pages
    (``db``/``q``: the split's frames, column ``_row``). The local-matching plan is
    the competition's (made from the whole folder, as submit makes it). No solution.csv is ever read.
    """
    task = task_of(meta, task)
    plan = plan or plan_matching(meta, conf)
    db, q, solution, embs = validation_split(meta, conf)
    if task == CLUSTERING:
        result, info = validate_clustering(db, q, solution, embs, conf, plan)
    else:
        result, info = validate_identification(db, q, solution, embs, conf, plan)
    lab = labelled_mask(meta)
    for name in sorted(set(meta["dataset"]) - set(meta.loc[lab, "dataset"])):  # nothing labelled to split
        print(f"warning: {name}: no labelled photos, so it cannot be validated (its row stays, empty)", flush=True)
        result[name] = ({"ARI": float("nan"), "n_clusters": 0, "n_identities": 0, "n_images": 0, "method": None,
                         "cut": None, "heldout_ARI": None, "note": "no labelled photos"} if task == CLUSTERING
                        else {p: {"note": "no labelled photos"} for p in ("global", final_pipeline(plan))})
    if task == CLUSTERING and "mean" in result:
        result["mean"] = result.pop("mean")  # keep "mean" last
    return result, {**info, "plan": plan, "descriptors": list(embs), "db": db, "q": q}


def headline(result: dict, plan: Plan, task: str) -> tuple[float | None, str]:
    """The one number a validation run is judged by, and what it is: the mean over datasets of the submitted
    pipeline's AnimalCLEF25 score (identification; label = the pipeline) or the mean ARI (clustering)."""
    if task == CLUSTERING:
        value = result.get("mean", {}).get("ARI")
        return (None if value is None or value != value else float(value)), "ARI"
    pipe = final_pipeline(plan)
    scores = [pipes[pipe]["score"] for pipes in result.values() if "score" in pipes.get(pipe, {})]
    return (float(sum(scores) / len(scores)) if scores else None), pipe
