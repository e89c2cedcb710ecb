"""The 2025 task wired: each query gets a known identity or ``new_individual``, per dataset.

Per dataset (``score_dataset``): candidate pairs for every query and every database photo (kit/pipeline/pairs.py),
local match scores for them (the plan's matchers), and per pipeline a pair model fitted on the database pairs that
turns each pair into P(same individual). An identity's score is its best photo's P. The open-set decision is
then chosen on held-out splits of the database (``fit_decisions``), reading the pair model's out-of-fold P, so
neither tau nor the pair model ever saw the pairs it is judged on, and no query label is read anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import metrics, openset, retrieve
from ..schema import NEW_INDIVIDUAL
from ..splits import anchors
from .local import Plan, score_candidates
from .pairs import FUSED, GLOBAL, candidates, combine, feature_names, fit_models, flanks, probability_matrix


def final_pipeline(plan: Plan) -> str:
    """The pipeline whose predictions are submitted: fused when local matching runs, else global."""
    return FUSED if plan.scorers else GLOBAL


def pipelines(plan: Plan) -> list[str]:
    return [GLOBAL] + ([FUSED] if plan.scorers else [])


@dataclass
class DatasetScores:
    """One dataset's image scores: ``db [N, N]`` (database photos as pseudo-queries, out-of-fold P) and
    ``q [Q, N]`` per pipeline, the global mean cosines behind them, and each pipeline's pair model."""

    db_frame: pd.DataFrame
    cos_db: np.ndarray  # [N, N] mean cosine among database photos (diagonal -inf)
    cos_q: np.ndarray  # [Q, N]
    cos_qq: np.ndarray  # [Q, Q] among the queries (for the query-side open-set evidence)
    db: dict[str, np.ndarray] = field(default_factory=dict)
    q: dict[str, np.ndarray] = field(default_factory=dict)
    models: dict[str, object] = field(default_factory=dict)  # pipeline -> PairFit


def _evidence(sims: np.ndarray, labels: np.ndarray, conf: dict) -> dict:
    identities, id_scores = retrieve.identity_scores(sims, labels, conf["retrieve"]["aggregate"],
                                                     conf["retrieve"]["topm"])
    top = id_scores.argmax(axis=1)
    return {"sims": sims, "identities": identities, "id_scores": id_scores, "top_identity": identities[top],
            "score": id_scores[np.arange(len(top)), top]}


def score_datasets(db: pd.DataFrame, q: pd.DataFrame, embs_db: dict, embs_q: dict, conf: dict, plan: Plan
                   ) -> dict[str, DatasetScores]:
    """``score_dataset`` for every dataset with database photos; pair models fitted per dataset (pooled where a
    dataset is too small, kit/pipeline/pairs.py fit_models)."""
    rc, topk = conf["rerank"], conf["retrieve"]["topk"]
    tables, built = {}, {}
    for name in sorted(db["dataset"].unique()):
        dm, qm = (db["dataset"] == name).to_numpy(), (q["dataset"] == name).to_numpy()
        ed = {d: e[dm] for d, e in embs_db.items()}
        eq = {d: e[qm] for d, e in embs_q.items()}
        dbf, qf = db[dm].reset_index(drop=True), q[qm].reset_index(drop=True)
        labels = dbf["identity"].to_numpy(dtype=object)
        fl_db, fl_q = flanks(dbf), flanks(qf)
        k = len(dbf) if topk == "all" else int(topk)
        cand_db = candidates(ed, ed, labels, k, int(rc["per_identity"]), True, fl_db, fl_db)
        cand_q = candidates(eq, ed, labels, k, int(rc["per_identity"]), False, fl_q, fl_db)
        if plan.scorers:
            paths = dbf["filepath"].tolist()
            for cand, qpaths in ((cand_db, paths), (cand_q, qf["filepath"].tolist())):
                skip = np.zeros(cand.index.shape, bool)
                skip[:, plan.topk:] = True  # candidates past the plan's shortlist keep their global evidence only
                if rc["skip_opposite_flanks"]:
                    skip |= cand.cols["flank_opposite"] > 0
                score_candidates(plan, cand, qpaths, paths, labels, conf, skip)
        cdb, cq = combine(ed), combine(eq)
        cos_db = cdb @ cdb.T
        np.fill_diagonal(cos_db, -np.inf)
        built[name] = (DatasetScores(dbf, cos_db, cq @ cdb.T, cq @ cq.T), cand_db, cand_q)
        anchor = anchors(dbf)  # folds are drawn by a key of each identity's photos: a rename moves nothing
        tables[name] = (cand_db, np.array([anchor[x] for x in labels], dtype=object))
    for pipe in pipelines(plan):
        fits = fit_models(tables, pipe, conf["pairmodel"])
        for name, (scores, cand_db, cand_q) in built.items():
            fit = fits[name]
            n = len(scores.db_frame)
            scores.db[pipe] = probability_matrix(cand_db, fit.oof, n, scores.cos_db)
            p_q = fit.model.predict({c: v for c, v in cand_q.flat().items()
                                     if c in feature_names(cand_q.cols, pipe)})
            scores.q[pipe] = probability_matrix(cand_q, p_q, n, scores.cos_q)
            scores.models[pipe] = fit
    return {name: s for name, (s, _, _) in built.items()}


def _features(ev: dict, cos: np.ndarray, cos_qq: np.ndarray | None, conf: dict) -> dict[str, np.ndarray]:
    """Open-set features of one query set: from its pipeline's identity scores, and the global evidence."""
    qb = openset.best_other(cos_qq) if conf["openset"]["query_evidence"] and cos_qq is not None else None
    return openset.query_features(ev["id_scores"], cos.max(axis=1), qb)


def _mix_query_fraction(part: pd.DataFrame, scores: DatasetScores, conf: dict) -> tuple[float, float]:
    """(estimated unknown share of the real queries, known-query fraction matching it) for one dataset, from the
    global top-1 cosine of a held-out split's known and unknown queries and of the real queries (their mixture)."""
    oc = conf["openset"]
    qf = oc["query_fraction"]
    splits = openset.calibration_splits(part, oc["n_unknown"], qf, 1, 1, oc["seed"])
    if not splits or not len(scores.cos_q):
        return float("nan"), qf
    s = splits[0]
    cal_db, cal_q = s[s["split"] == "database"], s[s["split"] == "query"]
    labels = part["identity"].to_numpy(dtype=object)
    cal = _evidence(scores.cos_db[np.ix_(cal_q["_row"], cal_db["_row"])], labels[cal_db["_row"]], conf)
    real = _evidence(scores.cos_q, labels, conf)
    new = cal_q["new_identity"].to_numpy()
    share = openset.estimate_unknown_share(real["score"], cal["score"][~new], cal["score"][new])
    return share, openset.matched_query_fraction(share, int(new.sum()), int((~s["new_identity"]).sum()), qf)


def _singleton_decisions(name: str, sc: DatasetScores, pipes: list[str], oc: dict) -> dict[str, dict]:
    """tau of a dataset whose every identity has one database photo: no known pseudo-query can be held out (its
    identity would leave the database), but every photo is a pretend-new animal against the others. tau is the
    ``openset.unknown_quantile`` quantile of their best global cosine to another photo, and a query is called new
    below it (its open-set score is its best global cosine to a database photo, ``score_on: cosine``)."""
    unknown = sc.cos_db.max(axis=1)  # [N]: the diagonal is -inf
    q = float(oc["unknown_quantile"])
    tau = float(np.quantile(unknown, q))
    print(f"warning: {name}: every identity in its database has one photo, so no known query can be held out to "
          f"calibrate on; tau is the {q:.0%} quantile of each photo's best cosine to another (each a pretend-new "
          f"animal): about {q:.0%} of new animals are called new (openset.unknown_quantile). Add a second photo of "
          "some identities to calibrate tau on known ones too", flush=True)
    return {p: {"tau": tau, "heldout_score": float("nan"), "candidate": "top1", "scorer": openset.make_scorer("top1"),
                "score_on": "cosine", "n_unknown": int(len(unknown)), "n_known": 0,
                "note": f"one photo per identity: tau = {q:.0%} quantile of the pretend-new photos' best cosine"}
            for p in pipes}


def fit_decisions(scores: dict[str, DatasetScores], conf: dict, plan: Plan) -> dict[str, dict[str, dict]]:
    """Per dataset and pipeline: the open-set scorer and tau, chosen on held-out open-set splits of the database
    (openset.calibration_splits), reading the database pairs' out-of-fold P: nothing is matched again per split.

    Returns {dataset: {pipeline: {"tau", "heldout_score" (cross-validated), "candidate", "scorer"
    (openset.Scorer), "n_unknown", "n_known" (held-out query images, all splits), "n_splits",
    "unknown_share" (estimate for the real queries), "query_fraction", "calibration" (openset.fit_decision)}}}.
    """
    oc, pipes = conf["openset"], pipelines(plan)
    out: dict[str, dict] = {}
    for name, sc in scores.items():
        if oc["threshold"] != "auto":
            out[name] = {p: {"tau": float(oc["threshold"]), "heldout_score": float("nan"), "candidate": "top1",
                             "scorer": openset.make_scorer("top1"), "n_unknown": 0, "n_known": 0,
                             "note": "fixed threshold"} for p in pipes}
            continue
        part = sc.db_frame.assign(_row=np.arange(len(sc.db_frame)))
        share, qf = _mix_query_fraction(part, sc, conf) if oc["match_mix"] else (float("nan"), oc["query_fraction"])
        splits = openset.calibration_splits(part, oc["n_unknown"], qf, oc["repeats"], oc["max_repeats"], oc["seed"])
        if not splits and len(part) >= 2 and not part["identity"].duplicated().any():
            out[name] = _singleton_decisions(name, sc, pipes, oc)
            continue
        if not splits:
            print(f"warning: {name}: too few identities to hold any out, so tau is openset.fallback_threshold="
                  f"{oc['fallback_threshold']} (not calibrated)", flush=True)
            out[name] = {p: {"tau": float(oc["fallback_threshold"]), "heldout_score": float("nan"),
                             "candidate": "top1", "scorer": openset.make_scorer("top1"), "n_unknown": 0,
                             "n_known": 0, "note": "too few identities to hold out; using openset.fallback_threshold"}
                         for p in pipes}
            continue
        labels = part["identity"].to_numpy(dtype=object)
        anchor = anchors(part)
        pooled: dict[str, dict[str, list]] = {p: {} for p in pipes}
        lab: dict[str, list] = {"unknown": [], "identity": [], "group": []}
        for r, s in enumerate(splits):
            qi = s.loc[s["split"] == "query", "_row"].to_numpy()
            di = s.loc[s["split"] == "database", "_row"].to_numpy()
            truth = labels[qi]
            cos = sc.cos_db[np.ix_(qi, di)]
            for pipe in pipes:
                ev = _evidence(sc.db[pipe][np.ix_(qi, di)], labels[di], conf)
                for f, v in _features(ev, cos, sc.cos_db[np.ix_(qi, qi)], conf).items():
                    pooled[pipe].setdefault(f, []).append(v)
                pooled[pipe].setdefault("_correct", []).append(ev["top_identity"] == truth)
            lab["unknown"].append(s.loc[s["split"] == "query", "new_identity"].to_numpy(bool))
            keys = np.array([anchor[t] for t in truth], dtype=object)  # the photos' key, not the name: see splits
            lab["identity"].append(np.array([f"{r}:{k}" for k in keys], dtype=object))
            lab["group"].append(keys.astype(str))
        unknown, identity, group = (np.concatenate(lab[k]) for k in ("unknown", "identity", "group"))
        out[name] = {}
        for pipe in pipes:
            feats = {f: np.concatenate(v) for f, v in pooled[pipe].items() if f != "_correct"}
            cal = openset.fit_decision(feats, np.concatenate(pooled[pipe]["_correct"]), unknown, identity, group, oc)
            out[name][pipe] = {"tau": cal["tau"], "heldout_score": cal["heldout_score"], "candidate": cal["candidate"],
                               "scorer": cal["scorer"], "n_unknown": int(unknown.sum()),
                               "n_known": int((~unknown).sum()), "n_splits": len(splits), "unknown_share": share,
                               "query_fraction": qf, "calibration": cal,
                               "pair_model": {**sc.models[pipe].model.describe(), "cv_mrr": sc.models[pipe].cv,
                                              "note": sc.models[pipe].note}}
    return out


def identify(db: pd.DataFrame, q: pd.DataFrame, embs_db: dict, embs_q: dict, conf: dict, plan: Plan
             ) -> tuple[dict[str, pd.DataFrame], dict]:
    """Predictions ``image_id,identity`` for every query row (in ``q`` order), per pipeline, and details.

    db, embs_db: the labelled images and {descriptor: [N, D]}; q, embs_q: the queries and {descriptor: [Q, D]}.
    Returns ({pipeline: predictions}, {dataset: {pipeline: {**fit_decisions' entry, "evidence",
    "query_index" [Q_d] (q's index), "features" {name: [Q_d]}, "openset_score" [Q_d]}}}).
    """
    scores = score_datasets(db, q, embs_db, embs_q, conf, plan)
    thresholds = fit_decisions(scores, conf, plan)
    pipes = pipelines(plan)
    preds = {p: pd.Series(NEW_INDIVIDUAL, index=q.index, dtype=object) for p in pipes}
    details: dict[str, dict] = {}
    for name, qpart in q.groupby("dataset", sort=True):
        if name not in scores:  # a dataset with no known individuals: every query is new
            print(f"warning: {name}: no database photos, so all {len(qpart)} queries are {NEW_INDIVIDUAL}", flush=True)
            details[name] = {p: {"tau": None, "note": f"no database images: all queries {NEW_INDIVIDUAL}"}
                             for p in pipes}
            continue
        sc = scores[name]
        labels = sc.db_frame["identity"].to_numpy(dtype=object)
        details[name] = {}
        for pipe in pipes:
            th = thresholds[name][pipe]
            ev = _evidence(sc.q[pipe], labels, conf)
            feats = _features(ev, sc.cos_q, sc.cos_qq, conf)
            score = sc.cos_q.max(axis=1) if th.get("score_on") == "cosine" else th["scorer"](feats)
            preds[pipe].loc[qpart.index] = openset.decide(ev["top_identity"], score, th["tau"])
            details[name][pipe] = {**th, "evidence": ev, "query_index": qpart.index.to_numpy(),
                                   "features": feats, "openset_score": score}
    out = {p: pd.DataFrame({"image_id": q["image_id"].to_numpy(), "identity": s.to_numpy()}) for p, s in preds.items()}
    for frame in out.values():
        assert len(frame) == len(q) and (frame["image_id"].to_numpy() == q["image_id"].to_numpy()).all()
    return out, details


def validate_identification(db: pd.DataFrame, q: pd.DataFrame, solution: pd.DataFrame, embs: dict, conf: dict,
                            plan: Plan) -> tuple[dict, dict]:
    """Metrics of ``identify`` on the held-out queries ``q`` against ``db``: {dataset: {pipeline: {metric: value}}}.

    ``db``/``q`` (column ``_row`` indexes each ``embs`` array) and ``solution`` (the answer key, used only here,
    to score) come from the validation split. Returns (metrics, {"details", "solution", "predictions"}).
    Besides the competition metrics, ``shortlist_recall``: the share of known queries whose identity is among
    their candidates (what local matching and the pair model can reach at all).
    """
    pick = lambda rows: {d: e[rows] for d, e in embs.items()}  # noqa: E731
    preds, details = identify(db, q, pick(db["_row"]), pick(q["_row"]), conf, plan)
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
                listed = ev["sims"][known] > -1  # candidates carry P >= 0, the rest -2 + cosine
                entry["shortlist_recall"] = float(np.mean(
                    [(listed[r] & (db_labels == t)).any() for r, t in enumerate(truth[known])])) if known.any() \
                    else float("nan")
            if name in table.index:
                row = table.loc[name]
                entry.update({"BAKS": float(row["BAKS"]), "BAUS": float(row["BAUS"]), "score": float(row["score"])})
            result.setdefault(name, {})[pipe] = entry
    return result, {"details": details, "solution": solution, "predictions": preds}
