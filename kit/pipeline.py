"""The stages wired together: ``submit`` (competition -> predictions) and ``validate`` (a labelled split ->
metrics). Everything here is plain orchestration over the stage modules' arrays and DataFrames.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import embed, openset, retrieve
from .cache import cache_root
from .data import labelled_mask
from .schema import NEW_INDIVIDUAL
from .splits import hide_answers, open_set_split

PIPELINES = ("global", "reranked", "fused")  # names used in metrics.json, as each stage exists


def embed_frame(df: pd.DataFrame, conf: dict) -> np.ndarray:
    """[len(df), D] float32 embeddings of ``df.filepath``, row-aligned with ``df``, through the cache."""
    return embed.embed_paths(df["filepath"].tolist(), conf["embed"], cache_root(conf["cache"]))


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
        scores.update(_refine(scores["global"], db, q, emb_db, conf))
    return {name: _evidence(s, db, conf) for name, s in scores.items()}


def _refine(global_scores: np.ndarray, db: pd.DataFrame, q: pd.DataFrame, emb_db: np.ndarray,
            conf: dict) -> dict[str, np.ndarray]:
    """Re-ranked and fused image scores for one dataset (kit.rerank.rerank_fuse, through the cache root).

    ``global_scores: [Q, N] float32`` cosine of the queries ``q`` to the database ``db`` (frames with
    ``filepath``, ``identity``, ``orientation``), ``emb_db: [N, D] float32``; ``conf`` the whole config.
    Returns ``{"reranked": [Q, N] float32, "fused": [Q, N] float32}``:
      reranked: the shortlist ordered by the local score alone (what the founding study did), every photo
        outside the shortlist below every photo in it (-1); pairs left unmatched (opposite flanks) score 0;
      fused: calibrated P(same identity) for every pair, the global one outside the shortlist.
    """
    from . import rerank

    fused, info = rerank.rerank_fuse(
        q["filepath"].tolist(), db["filepath"].tolist(), global_scores, db["identity"].to_numpy(), emb_db,
        int(conf["retrieve"]["topk"]), conf["rerank"], cache_root(conf["cache"]),
        query_orientation=q["orientation"].tolist(), gallery_orientation=db["orientation"].tolist())
    index, local = info["index"], info["local"][rerank.rerank_conf(conf["rerank"])["local_score"]]
    reranked = np.full(global_scores.shape, -1.0, np.float32)
    rows = np.broadcast_to(np.arange(len(index))[:, None], index.shape)
    ok = index >= 0
    reranked[rows[ok], index[ok]] = np.nan_to_num(local[ok], nan=0.0)
    return {"reranked": reranked, "fused": fused.astype(np.float32)}


def _pipelines(conf: dict) -> list[str]:
    return ["global"] + (["reranked", "fused"] if conf["rerank"].get("enabled") else [])


def _query_best(emb_q: np.ndarray, conf: dict) -> np.ndarray | None:
    """[Q] best cosine of each query to another query of its set, or None with openset.query_evidence off."""
    if not conf["openset"]["query_evidence"]:
        return None
    return openset.best_other(retrieve.similarity(emb_q, emb_q))


def _features(ev: dict, global_ev: dict, query_best: np.ndarray | None) -> dict[str, np.ndarray]:
    return openset.query_features(ev["id_scores"], global_ev["sims"].max(axis=1), query_best)


def _mix_query_fraction(part: pd.DataFrame, emb_db: np.ndarray, emb_q: np.ndarray, conf: dict
                        ) -> tuple[float, float]:
    """(estimated unknown share of the real queries, known-query fraction matching it) for one dataset.

    One held-out split with the default query fraction gives the labelled global top-1 score distributions
    of known and unknown queries; the real queries' global top-1 (against the whole database) is fitted as
    their mixture (openset.estimate_unknown_share). Only global cosine scores are used: cheap.
    """
    oc = conf["openset"]
    qf = oc["query_fraction"]
    splits = openset.calibration_splits(part, oc["n_unknown"], qf, 1, 1, oc["seed"])
    if not splits or len(emb_q) == 0:
        return float("nan"), qf
    s = splits[0]
    cal_db, cal_q = s[s["split"] == "database"], s[s["split"] == "query"]
    cal = _evidence(retrieve.similarity(emb_db[cal_q["_row"]], emb_db[cal_db["_row"]]), cal_db, conf)
    real = _evidence(retrieve.similarity(emb_q, emb_db[part["_row"]]), part, conf)
    new = cal_q["new_identity"].to_numpy()
    share = openset.estimate_unknown_share(real["score"], cal["score"][~new], cal["score"][new])
    n_known_images = int((~s["new_identity"]).sum())
    return share, openset.matched_query_fraction(share, int(new.sum()), n_known_images, qf)


def calibrate_thresholds(db: pd.DataFrame, emb_db: np.ndarray, conf: dict, q: pd.DataFrame | None = None,
                         emb_q: np.ndarray | None = None) -> dict[str, dict[str, dict]]:
    """Per dataset and pipeline: the open-set scorer and tau, chosen on held-out open-set splits of the
    database (openset.calibration_splits). Query labels are never looked at; the unlabelled queries ``q``
    (with ``emb_q``: [Q, D]), when given and ``openset.match_mix`` is on, only set the held-out splits'
    known:unknown query mix to the one estimated for them.

    Returns {dataset: {pipeline: {"tau", "heldout_score" (cross-validated), "candidate", "scorer"
    (openset.Scorer), "n_unknown", "n_known" (held-out query images, all splits), "n_splits",
    "unknown_share" (estimate for the real queries), "query_fraction", "calibration" (openset.calibrate)}}}.
    """
    oc = conf["openset"]
    pipes = _pipelines(conf)
    out: dict[str, dict] = {}
    if oc["threshold"] != "auto":
        fixed = {"tau": float(oc["threshold"]), "heldout_score": float("nan"), "candidate": "top1",
                 "scorer": openset.make_scorer("top1"), "n_unknown": 0, "n_known": 0, "note": "fixed threshold"}
        return {name: {p: dict(fixed) for p in pipes} for name in db["dataset"].unique()}
    for name, part in db.assign(_row=np.arange(len(db))).groupby("dataset", sort=True):
        share, qf = float("nan"), oc["query_fraction"]
        if oc["match_mix"] and q is not None and emb_q is not None:
            qmask = (q["dataset"] == name).to_numpy()
            share, qf = _mix_query_fraction(part, emb_db, emb_q[qmask], conf)
        max_repeats = min(oc["max_repeats"], oc["max_repeats_rerank"]) if len(pipes) > 1 else oc["max_repeats"]
        splits = openset.calibration_splits(part, oc["n_unknown"], qf, oc["repeats"], max_repeats, oc["seed"])
        if not splits:
            fb = {"tau": float(oc["fallback_threshold"]), "heldout_score": float("nan"), "candidate": "top1",
                  "scorer": openset.make_scorer("top1"), "n_unknown": 0, "n_known": 0,
                  "note": "too few identities to hold out; using openset.fallback_threshold"}
            out[name] = {p: dict(fb) for p in pipes}
            continue
        pooled: dict[str, dict[str, list]] = {p: {} for p in pipes}
        labels: dict[str, list] = {"correct": [], "unknown": [], "identity": [], "group": []}
        for r, s in enumerate(splits):
            cal_db = s[s["split"] == "database"].reset_index(drop=True)
            cal_q = s[s["split"] == "query"].reset_index(drop=True)
            evs = match(cal_db, cal_q, emb_db[cal_db["_row"]], emb_db[cal_q["_row"]], conf)
            query_best = _query_best(emb_db[cal_q["_row"]], conf)
            truth = cal_q["identity"].to_numpy()
            for pipe, ev in evs.items():
                for f, v in _features(ev, evs["global"], query_best).items():
                    pooled[pipe].setdefault(f, []).append(v)
                pooled[pipe].setdefault("_correct", []).append(ev["top_identity"] == truth)
            labels["unknown"].append(cal_q["new_identity"].to_numpy(bool))
            labels["identity"].append(np.array([f"{r}:{t}" for t in truth], dtype=object))
            labels["group"].append(truth.astype(str))
        unknown, identity, group = (np.concatenate(labels[k]) for k in ("unknown", "identity", "group"))
        out[name] = {}
        for pipe in pipes:
            feats = {f: np.concatenate(v) for f, v in pooled[pipe].items() if f != "_correct"}
            cal = openset.calibrate(feats, np.concatenate(pooled[pipe]["_correct"]), unknown, identity, group, oc)
            out[name][pipe] = {"tau": cal["tau"], "heldout_score": cal["heldout_score"],
                               "candidate": cal["candidate"], "scorer": cal["scorer"],
                               "n_unknown": int(unknown.sum()), "n_known": int((~unknown).sum()),
                               "n_splits": len(splits), "unknown_share": share, "query_fraction": qf,
                               "calibration": cal}
    return out


def identify(db: pd.DataFrame, q: pd.DataFrame, emb_db: np.ndarray, emb_q: np.ndarray, conf: dict
             ) -> tuple[dict[str, pd.DataFrame], dict]:
    """Predictions ``image_id,identity`` for every query row (in ``q`` order), per pipeline, and details.

    db, emb_db: the labelled images and their [N, D] embeddings; q, emb_q: the queries and [Q, D].
    Returns ({pipeline: predictions}, {dataset: {pipeline: {**calibrate_thresholds' entry, "evidence",
    "query_index" [Q_d] (q's index), "features" {name: [Q_d]}, "openset_score" [Q_d]}}}).
    """
    thresholds = calibrate_thresholds(db, emb_db, conf, q, emb_q)
    pipes = _pipelines(conf)
    preds = {p: pd.Series(NEW_INDIVIDUAL, index=q.index, dtype=object) for p in pipes}
    details: dict[str, dict] = {}
    for name, qpart in q.groupby("dataset", sort=True):
        dmask = (db["dataset"] == name).to_numpy()
        if not dmask.any():  # a dataset with no known individuals: every query is new
            details[name] = {p: {"tau": None, "note": "no database images: all queries new_individual"}
                             for p in pipes}
            continue
        qrows = q.index.get_indexer(qpart.index)
        evs = match(db[dmask].reset_index(drop=True), qpart, emb_db[dmask], emb_q[qrows], conf)
        query_best = _query_best(emb_q[qrows], conf)
        details[name] = {}
        for pipe, ev in evs.items():
            th = thresholds[name][pipe]
            feats = _features(ev, evs["global"], query_best)
            score = th["scorer"](feats)
            preds[pipe].loc[qpart.index] = openset.decide(ev["top_identity"], score, th["tau"])
            details[name][pipe] = {**th, "evidence": ev, "query_index": qpart.index.to_numpy(),
                                   "features": feats, "openset_score": score}
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
