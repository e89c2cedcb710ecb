"""The 2025 task wired: each query gets a known identity or ``new_individual``, per dataset.

Per dataset (``score_datasets``): held-out calibration splits of the database (whole identities hidden as
pretend-new animals, some photos of the others as known pseudo-queries), each scored exactly as the real queries
are, against its own gallery only, with a metric head trained on that gallery alone (kit/pipeline/stage.py); the
real queries scored against the whole database with a head trained on all of it. Per pipeline, a pair model fitted
on the splits' pairs turns each pair into P(same individual); an identity's score is its best photo's P. The
open-set decision is chosen on the splits (``fit_decisions``), reading the pair model's out-of-fold P: neither tau,
the pair model nor a head ever saw the photos and identities it is judged on, and no query label is read anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import metrics, openset, retrieve
from ..schema import NEW_INDIVIDUAL
from ..head import trainable
from ..openset import calibration_splits
from .local import Plan
from .pairs import FUSED, GLOBAL, NOHEAD, Candidates, PairTable, combine, feature_names, fit_models, probability_matrix
from .stage import pair_candidates, split_table, train_head, with_head


def final_pipeline(plan: Plan) -> str:
    """The pipeline whose predictions are submitted: fused when local matching runs, else global."""
    return FUSED if plan.scorers else GLOBAL


def pipelines(plan: Plan, head: bool = False) -> list[str]:
    """The pipelines a run scores: global, fused (with local matching), and with a head the submitted one without
    the head's columns (``<final>-nohead``), so a report shows what the head adds in the same run."""
    return [GLOBAL] + ([FUSED] if plan.scorers else []) + ([final_pipeline(plan) + NOHEAD] if head else [])


@dataclass
class Split:
    """One held-out calibration split of a dataset's database: pseudo-query rows ``qi [R]`` against gallery rows
    ``di [N]`` (rows of the dataset's database), which are unknown, the raw mean cosines, and per pipeline the
    out-of-fold P matrix ``p [R, N]`` (kit/pipeline/pairs.py probability_matrix)."""

    qi: np.ndarray
    di: np.ndarray
    unknown: np.ndarray  # [R] bool
    cos: np.ndarray  # [R, N] mean raw cosine
    cos_qq: np.ndarray  # [R, R] among the pseudo-queries
    table: PairTable
    p: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class DatasetScores:
    """One dataset's scores: the real queries' ``q [Q, N]`` per pipeline, the global mean cosines behind them, the
    held-out calibration splits (each scored as the real queries are), each pipeline's pair model and the head."""

    db_frame: pd.DataFrame
    cos_q: np.ndarray  # [Q, N] mean cosine of the queries to the database
    cos_qq: np.ndarray  # [Q, Q] among the queries (for the query-side open-set evidence)
    splits: list[Split] = field(default_factory=list)
    q: dict[str, np.ndarray] = field(default_factory=dict)
    models: dict[str, object] = field(default_factory=dict)  # pipeline -> PairFit
    head: dict = field(default_factory=dict)  # {"on", "why", "dim", "n_identities"}
    unknown_share: float = float("nan")
    query_fraction: float = 0.0


def _evidence(sims: np.ndarray, labels: np.ndarray, conf: dict) -> dict:
    identities, id_scores = retrieve.identity_scores(sims, labels, conf["retrieve"]["aggregate"],
                                                     conf["retrieve"]["topm"])
    top = id_scores.argmax(axis=1)
    return {"sims": sims, "identities": identities, "id_scores": id_scores, "top_identity": identities[top],
            "score": id_scores[np.arange(len(top)), top]}


def _cos(a: dict, b: dict) -> np.ndarray:
    return combine(a) @ combine(b).T


def _split_rows(s: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = s["split"] == "query"
    return s.loc[q, "_row"].to_numpy(), s.loc[~q, "_row"].to_numpy(), s.loc[q, "new_identity"].to_numpy(bool)


def score_datasets(db: pd.DataFrame, q: pd.DataFrame, embs_db: dict, embs_q: dict, conf: dict, plan: Plan
                   ) -> dict[str, DatasetScores]:
    """Per dataset with database photos: held-out calibration splits of its database, each scored against its own
    gallery with a head that never saw its pseudo-queries (kit/pipeline/stage.py), and the real queries scored
    against the whole database with a head trained on all of it; pair models fitted per dataset on the splits
    (pooled where a dataset is too small, kit/pipeline/pairs.py fit_models), out of fold on the splits."""
    oc, topk = conf["openset"], conf["retrieve"]["topk"]
    built: dict[str, DatasetScores] = {}
    real: dict[str, Candidates] = {}
    tables: list[PairTable] = []
    for name in sorted(db["dataset"].unique()):
        dm, qm = (db["dataset"] == name).to_numpy(), (q["dataset"] == name).to_numpy()
        ed = {d: e[dm] for d, e in embs_db.items()}
        eq = {d: e[qm] for d, e in embs_q.items()}
        dbf, qf = db[dm].reset_index(drop=True), q[qm].reset_index(drop=True)
        labels = dbf["identity"].to_numpy(dtype=object)
        part = dbf.assign(_row=np.arange(len(dbf)))
        sc = DatasetScores(dbf, _cos(eq, ed), _cos(eq, eq))
        head_on, why = trainable(labels, conf["head"])
        sc.unknown_share, sc.query_fraction = _mix_query_fraction(part, ed, eq, conf) if oc["match_mix"] \
            else (float("nan"), oc["query_fraction"])
        k = len(dbf) if topk == "all" else int(topk)
        if oc["threshold"] == "auto":
            for s in calibration_splits(part, oc["n_unknown"], sc.query_fraction, oc["repeats"],
                                        oc["max_repeats"], oc["seed"]):
                qi, di, unknown = _split_rows(s)
                table, sq, sd = split_table(part, ed, qi, di, conf, plan, k, use_head=head_on)
                sc.splits.append(Split(qi, di, unknown, _cos(sq, sd), _cos(sq, sq), table))
                tables.append(table)
        head = train_head(ed, labels, conf) if head_on else None
        sc.head = {"on": head is not None, "why": why,
                   **({"dim": int(head.weight.shape[1]), "n_identities": head.n_identities} if head else {})}
        eqh, edh = with_head(eq, head), with_head(ed, head)
        real[name] = pair_candidates(eqh, edh, qf, dbf, conf, plan, k)
        built[name] = sc
    head_on = any(sc.head["on"] for sc in built.values())
    for pipe in pipelines(plan, head_on):
        fits, oofs = fit_models(tables, pipe, conf["pairmodel"]) if tables else ({}, [])
        for split_table_, oof in zip(tables, oofs):
            sp = next(s for s in built[split_table_.dataset].splits if s.table is split_table_)
            sp.p[pipe] = probability_matrix(sp.table.cand, oof, len(sp.di), sp.cos)
        pooled = next(iter(fits.values()), None)
        for name, sc in built.items():
            fit = fits.get(name, pooled)
            cand = real[name]
            names = feature_names(cand.cols, pipe)
            p_q = fit.model.predict({c: v for c, v in cand.flat().items() if c in names}) if fit is not None \
                else cand.flat()[f"cos:{next(iter(embs_db))}"]  # nothing labelled to fit on: the cosine
            sc.q[pipe] = probability_matrix(cand, p_q, len(sc.db_frame), sc.cos_q)
            sc.models[pipe] = fit
    return built


def _features(ev: dict, cos: np.ndarray, cos_qq: np.ndarray | None, conf: dict) -> dict[str, np.ndarray]:
    """Open-set features of one query set: from its pipeline's identity scores, and the global evidence."""
    qb = openset.best_other(cos_qq) if conf["openset"]["query_evidence"] and cos_qq is not None else None
    return openset.query_features(ev["id_scores"], cos.max(axis=1), qb)


def _mix_query_fraction(part: pd.DataFrame, ed: dict, eq: dict, conf: dict) -> tuple[float, float]:
    """(estimated unknown share of the real queries, known-query fraction matching it) for one dataset, from the
    global top-1 cosine of a held-out split's known and unknown queries and of the real queries (their mixture)."""
    oc = conf["openset"]
    qf = oc["query_fraction"]
    splits = openset.calibration_splits(part, oc["n_unknown"], qf, 1, 1, oc["seed"])
    if not splits or not len(next(iter(eq.values()))):
        return float("nan"), qf
    s = splits[0]
    qi, di, new = _split_rows(s)
    labels = part["identity"].to_numpy(dtype=object)
    sub = lambda rows: {d: e[rows] for d, e in ed.items()}  # noqa: E731
    cal = _evidence(_cos(sub(qi), sub(di)), labels[di], conf)
    real = _evidence(_cos(eq, ed), labels, conf)
    share = openset.estimate_unknown_share(real["score"], cal["score"][~new], cal["score"][new])
    return share, openset.matched_query_fraction(share, int(new.sum()), int((~s["new_identity"]).sum()), qf)


def _fixed(tau: float, note: str, pipes: list[str]) -> dict[str, dict]:
    return {p: {"tau": tau, "heldout_score": float("nan"), "candidate": "top1", "scorer": openset.make_scorer("top1"),
                "n_unknown": 0, "n_known": 0, "note": note} for p in pipes}


def fit_decisions(scores: dict[str, DatasetScores], conf: dict, plan: Plan) -> dict[str, dict[str, dict]]:
    """Per dataset and pipeline: the open-set scorer and tau, chosen on the held-out calibration splits of the
    database (``score_datasets``), reading each split's out-of-fold P against its own gallery.

    Returns {dataset: {pipeline: {"tau", "heldout_score" (cross-validated), "candidate", "scorer"
    (openset.Scorer), "n_unknown", "n_known" (held-out query images, all splits), "n_splits",
    "unknown_share" (estimate for the real queries), "query_fraction", "calibration" (openset.fit_decision),
    "pair_model", "head"}}}.
    """
    oc = conf["openset"]
    pipes = pipelines(plan, any(sc.head.get("on") for sc in scores.values()))
    out: dict[str, dict] = {}
    for name, sc in scores.items():
        if oc["threshold"] != "auto":
            out[name] = _fixed(float(oc["threshold"]), "fixed threshold", pipes)
            continue
        if not sc.splits:
            print(f"warning: {name}: too few identities to hold any out, so tau is openset.fallback_threshold="
                  f"{oc['fallback_threshold']} (not calibrated)", flush=True)
            out[name] = _fixed(float(oc["fallback_threshold"]),
                               "too few identities to hold out; using openset.fallback_threshold", pipes)
            continue
        labels = sc.db_frame["identity"].to_numpy(dtype=object)
        pooled: dict[str, dict[str, list]] = {p: {} for p in pipes}
        lab: dict[str, list] = {"unknown": [], "identity": [], "group": []}
        for r, sp in enumerate(sc.splits):
            truth = labels[sp.qi]
            for pipe in pipes:
                ev = _evidence(sp.p[pipe], labels[sp.di], conf)
                for f, v in _features(ev, sp.cos, sp.cos_qq, conf).items():
                    pooled[pipe].setdefault(f, []).append(v)
                pooled[pipe].setdefault("_correct", []).append(ev["top_identity"] == truth)
            lab["unknown"].append(sp.unknown)
            lab["identity"].append(np.array([f"{r}:{t}" for t in truth], dtype=object))
            lab["group"].append(truth.astype(str))
        unknown, identity, group = (np.concatenate(lab[k]) for k in ("unknown", "identity", "group"))
        out[name] = {}
        for pipe in pipes:
            feats = {f: np.concatenate(v) for f, v in pooled[pipe].items() if f != "_correct"}
            cal = openset.fit_decision(feats, np.concatenate(pooled[pipe]["_correct"]), unknown, identity, group, oc)
            fit = sc.models.get(pipe)
            out[name][pipe] = {"tau": cal["tau"], "heldout_score": cal["heldout_score"], "candidate": cal["candidate"],
                               "scorer": cal["scorer"], "n_unknown": int(unknown.sum()),
                               "n_known": int((~unknown).sum()), "n_splits": len(sc.splits),
                               "unknown_share": sc.unknown_share, "query_fraction": sc.query_fraction,
                               "calibration": cal, "head": sc.head,
                               "pair_model": None if fit is None else {**fit.model.describe(), "cv_mrr": fit.cv,
                                                                       "note": fit.note}}
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
    pipes = pipelines(plan, any(sc.head.get("on") for sc in scores.values()))
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
            score = th["scorer"](feats)
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
