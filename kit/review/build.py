"""From a pipeline run to its review site: ``submission_site`` (kit review, kit submit --review) and
``validation_site`` (kit validate --review, with the answers).

Nothing is computed again that a run already has: the evidence and decisions come from kit.pipeline's details, the
embeddings (2026) and the local features from their caches. What is new is drawing: the matches of each query's
top ``review.drawn`` candidates, from the plan's first matcher (kit/review/matches.py), and the thumbnails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..cache import cache_root
from ..data import labelled_mask
from ..schema import CLUSTERING
from .clusters import clustering_page
from .identification import identification_page
from .matches import pair_matches
from .site import write_site


def _matcher(plan, conf: dict, paths_q: list[str], paths_db: list[str]):
    """``pairs [P, 2] -> matches`` with the plan's first scorer, or None when local matching is off."""
    if not plan.scorers:
        return None
    scorer, cache_dir, lines = plan.scorers[0], cache_root(conf["cache"]), int(conf["review"]["max_lines"])
    return lambda pairs: pair_matches(scorer, paths_q, paths_db, pairs, cache_dir, lines)


def identification_pages(db: pd.DataFrame, q: pd.DataFrame, pred: pd.DataFrame, details: dict, conf: dict, plan,
                         solution: pd.DataFrame | None = None) -> list[dict]:
    """One page per dataset of a 2025 run: ``db``/``q`` the frames ``identify`` ran on (its details index ``q``),
    ``pred`` (image_id, identity) the submitted predictions, ``details`` {dataset: the submitted pipeline's
    details}; ``solution`` (validate) the answers, index-aligned with ``q``."""
    decided = pred.set_index("image_id")["identity"]
    pages = []
    for name in sorted(q["dataset"].unique()):
        det = details.get(name, {})
        qpart = q[q["dataset"] == name]
        if "query_index" in det:
            qpart = q.loc[det["query_index"]]
        dbf = db[db["dataset"] == name].reset_index(drop=True)
        truth = None if solution is None else solution.loc[qpart.index, ["identity", "new_identity"]]
        local_note = plan.why if not plan.scorers else ""
        pages.append(identification_page(
            name, qpart.reset_index(drop=True), dbf, det.get("evidence"),
            decided.loc[qpart["image_id"]].to_numpy(dtype=object), det.get("openset_score"), det.get("tau"),
            conf["review"], score_name=det.get("candidate", "top1"),
            matcher=_matcher(plan, conf, qpart["filepath"].tolist(), dbf["filepath"].tolist()),
            local_note=local_note, truth=None if truth is None else truth.reset_index(drop=True)))
    return pages


def clustering_pages(test: pd.DataFrame, pred: pd.DataFrame, conf: dict, truth=None) -> list[dict]:
    """One page per dataset of a 2026 run: ``test`` the clustered photos, ``pred`` (image_id, cluster) their
    clusters; ``truth [len(test)]`` (validate) their identities. Embeddings are read back from the cache."""
    from ..pipeline import combine, embed_frame

    test = test.reset_index(drop=True)
    emb = combine(embed_frame(test, conf))  # [M, D], as the clustering saw them
    cluster = pred.set_index("image_id")["cluster"].loc[test["image_id"]].to_numpy(dtype=object)
    truth = None if truth is None else np.asarray(truth, dtype=object)
    pages = []
    for name in sorted(test["dataset"].unique()):
        rows = np.flatnonzero((test["dataset"] == name).to_numpy())
        pages.append(clustering_page(name, test.iloc[rows], cluster[rows], emb[rows], conf["review"],
                                     None if truth is None else truth[rows]))
    return pages


def _write(out, pages: list[dict], meta: pd.DataFrame, conf: dict, answers: bool, header: dict) -> dict:
    root = Path(meta.attrs.get("root", "competition"))
    return write_site(out, pages, competition=root.name, layout=meta.attrs.get("layout", "2025"),
                      thumb_size=int(conf["review"]["thumb_size"]), cache_dir=cache_root(conf["cache"]),
                      answers=answers, header={"data": str(root), **header})


def submission_site(out, meta: pd.DataFrame, conf: dict, task: str, plan, pred: pd.DataFrame, details: dict) -> dict:
    """The review site of a submission: what ``pipeline.submit(meta, conf, task, plan)`` returned, page by page.
    Returns write_site's {"index", "pages", "thumbnails"}."""
    lab = labelled_mask(meta)
    if task == CLUSTERING:
        pages = clustering_pages(meta[~lab], pred, conf)
    else:
        db, q = meta[lab].reset_index(drop=True), meta[~lab].reset_index(drop=True)
        pages = identification_pages(db, q, pred, details, conf, plan)
    return _write(out, pages, meta, conf, False, {"task": task, "local matching": plan.why})


def validation_site(out, meta: pd.DataFrame, conf: dict, task: str, info: dict) -> dict:
    """The review site of ``pipeline.validate``'s run (``info``: its second value), with the answers shown and the
    errors first."""
    from ..pipeline import final_pipeline

    plan, q, solution = info["plan"], info["q"], info["solution"]
    if task == CLUSTERING:
        pages = clustering_pages(q, info["predictions"], conf, solution["identity"].to_numpy(dtype=object))
    else:
        final = final_pipeline(plan)
        details = {name: d.get(final, {}) for name, d in info["details"].items()}
        pages = identification_pages(info["db"], q, info["predictions"][final], details, conf, plan, solution)
    return _write(out, pages, meta, conf, True, {"task": task, "local matching": plan.why,
                                                 "answers": "a validation split of the labelled rows (kit validate)"})
