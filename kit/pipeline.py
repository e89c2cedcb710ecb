"""The stages wired together: ``submit`` (competition -> predictions) and ``validate`` (a labelled split ->
metrics). Everything here is plain orchestration over the stage modules' arrays and DataFrames.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import embed, openset, retrieve
from .data import labelled_mask
from .splits import hide_answers, open_set_split

PIPELINES = ("global", "reranked", "fused")  # names used in metrics.json, as each stage exists


def embed_frame(df: pd.DataFrame, conf: dict, backbone: embed.Backbone | None = None) -> np.ndarray:
    """[len(df), D] float32 embeddings of ``df.filepath``, row-aligned with ``df``, through the cache."""
    return embed.embed_paths(df["filepath"].tolist(), conf["embed"], conf["cache"], backbone)


def final_pipeline(conf: dict) -> str:
    """The pipeline whose predictions are submitted: fused when re-ranking is on, else global."""
    return "fused" if conf["rerank"].get("enabled") else "global"


def _evidence(sims: np.ndarray, db: pd.DataFrame, conf: dict) -> dict:
    identities, id_scores = retrieve.identity_scores(
        sims, db["identity"].to_numpy(), conf["retrieve"]["aggregate"], conf["retrieve"]["topm"])
    top = id_scores.argmax(axis=1)
    return {"sims": sims, "identities": identities, "id_scores": id_scores,
            "top_identity": identities[top], "score": id_scores[np.arange(len(top)), top]}


def match(db: pd.DataFrame, q: pd.DataFrame, emb_db: np.ndarray, emb_q: np.ndarray, conf: dict
          ) -> dict[str, dict]:
    """Evidence for one dataset's queries against its database, per pipeline.

    Returns {pipeline: evidence}; "global" always, "reranked" and "fused" when ``rerank.enabled``.
    Each evidence is a dict of arrays:
      sims: [Q, N] float32, query x database image score (cosine for global);
      identities: [I] object; id_scores: [Q, I] float32 (aggregated per identity);
      top_identity: [Q] object; score: [Q] float32, the open-set score (best identity score).
    """
    scores = {"global": retrieve.similarity(emb_q, emb_db)}
    if conf["rerank"].get("enabled"):
        from . import rerank

        scores.update(rerank.refine(scores["global"], db, q, conf))
    return {name: _evidence(s, db, conf) for name, s in scores.items()}


def calibrate_thresholds(db: pd.DataFrame, emb_db: np.ndarray, conf: dict) -> dict[str, dict[str, dict]]:
    """Per dataset and pipeline: tau chosen on a held-out open-set split of the database alone (no query
    is looked at).

    Returns {dataset: {pipeline: {"tau": float, "heldout_score": float, "n_unknown": int, "n_known": int}}}.
    """
    oc = conf["openset"]
    pipes = ["global"] + (["reranked", "fused"] if conf["rerank"].get("enabled") else [])
    out: dict[str, dict] = {}
    if oc["threshold"] != "auto":
        fixed = {"tau": float(oc["threshold"]), "heldout_score": float("nan"), "n_unknown": 0, "n_known": 0}
        return {name: {p: dict(fixed) for p in pipes} for name in db["dataset"].unique()}
    split = open_set_split(db.assign(_row=np.arange(len(db))), n_unknown=oc["n_unknown"],
                           query_fraction=conf["validate"]["query_fraction"], seed=oc["seed"])
    for name, part in split.groupby("dataset", sort=True):
        cal_db, cal_q = part[part["split"] == "database"], part[part["split"] == "query"]
        if cal_q.empty or cal_q["new_identity"].all() or not cal_q["new_identity"].any():
            fb = {"tau": float(oc["fallback_threshold"]), "heldout_score": float("nan"), "n_unknown": 0,
                  "n_known": 0, "note": "too few identities to hold out; using openset.fallback_threshold"}
            out[name] = {p: dict(fb) for p in pipes}
            continue
        evs = match(cal_db, cal_q, emb_db[cal_db["_row"]], emb_db[cal_q["_row"]], conf)
        truth = cal_q["identity"].to_numpy()
        out[name] = {}
        for pipe, ev in evs.items():
            tau, best = openset.choose_threshold(ev["score"], ev["top_identity"] == truth,
                                                 cal_q["new_identity"].to_numpy(), truth)
            out[name][pipe] = {"tau": tau, "heldout_score": best, "n_unknown": int(cal_q["new_identity"].sum()),
                               "n_known": int((~cal_q["new_identity"]).sum())}
    return out


def identify(db: pd.DataFrame, q: pd.DataFrame, emb_db: np.ndarray, emb_q: np.ndarray, conf: dict
             ) -> tuple[dict[str, pd.DataFrame], dict]:
    """Predictions ``image_id,identity`` for every query row (in ``q`` order), per pipeline, and details.

    db, emb_db: the labelled images and their [N, D] embeddings; q, emb_q: the queries and [Q, D].
    Returns ({pipeline: predictions}, {dataset: {pipeline: {tau, heldout_score, evidence, query_index}}}).
    """
    thresholds = calibrate_thresholds(db, emb_db, conf)
    pipes = ["global"] + (["reranked", "fused"] if conf["rerank"].get("enabled") else [])
    preds = {p: pd.Series(openset.NEW, index=q.index, dtype=object) for p in pipes}
    details: dict[str, dict] = {}
    for name, qpart in q.groupby("dataset", sort=True):
        dmask = (db["dataset"] == name).to_numpy()
        if not dmask.any():  # a dataset with no known individuals: every query is new
            details[name] = {p: {"tau": None, "note": "no database images: all queries new_individual"}
                             for p in pipes}
            continue
        qrows = q.index.get_indexer(qpart.index)
        evs = match(db[dmask].reset_index(drop=True), qpart, emb_db[dmask], emb_q[qrows], conf)
        details[name] = {}
        for pipe, ev in evs.items():
            tau = thresholds[name][pipe]["tau"]
            preds[pipe].loc[qpart.index] = openset.decide(ev["top_identity"], ev["score"], tau)
            details[name][pipe] = {**thresholds[name][pipe], "evidence": ev, "query_index": qpart.index.to_numpy()}
    out = {p: pd.DataFrame({"image_id": q["image_id"].to_numpy(), "identity": s.to_numpy()}) for p, s in preds.items()}
    for frame in out.values():
        assert len(frame) == len(q) and (frame["image_id"].to_numpy() == q["image_id"].to_numpy()).all()
    return out, details


def run_submission(meta: pd.DataFrame, conf: dict) -> tuple[pd.DataFrame, dict]:
    """Predictions for a competition read by data.read_competition (2025 layout)."""
    emb = embed_frame(meta, conf)
    lab = labelled_mask(meta)
    db, q = meta[lab].reset_index(drop=True), meta[~lab].reset_index(drop=True)
    preds, details = identify(db, q, emb[lab], emb[~lab], conf)
    final = final_pipeline(conf)
    return preds[final], {name: d.get(final, {}) for name, d in details.items()}


def run_validation(meta: pd.DataFrame, conf: dict) -> tuple[dict, dict]:
    """Metrics on an open-set split of the labelled rows: {dataset: {pipeline: {metric: value}}}.

    The split's queries lose their labels before the pipeline sees them; the answer key is used only here,
    to score. Returns (metrics, details) where details holds per-dataset thresholds and evidence.
    """
    from . import metrics

    vc = conf["validate"]
    lab = meta[labelled_mask(meta)].reset_index(drop=True)
    emb_all = embed_frame(lab, conf)
    split = open_set_split(lab.assign(_row=np.arange(len(lab))), n_unknown=vc["n_unknown"],
                           query_fraction=vc["query_fraction"], seed=vc["seed"])
    db, q, solution = hide_answers(split)
    preds, details = identify(db, q, emb_all[db["_row"]], emb_all[q["_row"]], conf)
    result: dict[str, dict] = {}
    for pipe, pred in preds.items():
        _, table = metrics.score_2025(solution, pred)
        for name, per_pipe in details.items():
            det = per_pipe.get(pipe, {})
            ev = det.get("evidence")
            entry: dict[str, float] = {}
            if ev is not None:
                qi = det["query_index"]
                known = ~solution.loc[qi, "new_identity"].to_numpy()
                truth = solution.loc[qi, "identity"].to_numpy()
                db_labels = db.loc[db["dataset"] == name, "identity"].to_numpy()
                ranked = retrieve.ranked_labels(ev["sims"][known], db_labels, 20)
                entry.update(metrics.rank_k(ranked, truth[known], ks=(1, 5, 20)))
                entry["mAP"] = metrics.mean_average_precision(ev["sims"][known], db_labels, truth[known])
            if name in table.index:
                row = table.loc[name]
                entry.update({"BAKS": float(row["BAKS"]), "BAUS": float(row["BAUS"]), "score": float(row["score"])})
            result.setdefault(name, {})[pipe] = entry
    return result, {"details": details, "solution": solution, "predictions": preds}
