"""Benchmark of the 2026 clustering stage: ARI against hindsight baselines, and cost against N.

    .venv/bin/python bench/cluster.py COMPETITION [--set key=value ...] [--sizes 1000,2000,5000,10000]

COMPETITION is a 2026-layout folder (``kit import-folders --layout 2026`` or ``kit synth --layout 2026``). With
its ``solution.csv`` beside it (import-folders and synth write one), the submission pipeline clusters the test
exactly as ``kit submit`` does (fitted on train only) and the answer key scores it here; without one, an
identity-disjoint split of the train identities plays the test. Every variant runs in the same process on the
same embeddings, next to baselines whose threshold the answer key picks in hindsight:

- ``cosine_components``: pairs with cosine >= t linked, connected components, best t in hindsight;
- ``cosine_average``: average linkage on 1 - cosine, best cut in hindsight (the naive one-threshold method);
- ``<variant> oracle``: the variant's own P(same) with its method's best cut in hindsight (how much the held-out
  cut choice loses).

Timing: ``cluster_matrix`` on random block-structured [N, N] scores for each method and N.
Writes bench/cluster.json (or --out) and prints tables. Heavy on CPU: run it alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kit import cluster  # noqa: E402
from kit.config import load_config  # noqa: E402
from kit.data import labelled_mask, read_competition, read_csv_str  # noqa: E402
from kit.cluster.features import DIRECT_FEATURES, NEIGHBOUR_FEATURES  # noqa: E402
from kit.pipeline import combine, embed_frame, task_of  # noqa: E402
from kit.splits import hide_answers, open_set_split  # noqa: E402

VARIANTS = {  # name: config overrides on top of the command line's
    "kit (default)": {},
    "no train links": {"train_links": False},
    "isotonic cosine": {"calibration": "isotonic"},
    "average only": {"method": "average"},
    "complete only": {"method": "complete"},
    "components only": {"method": "components"},
}


def _task(meta: pd.DataFrame, conf: dict):
    """(train frame, train emb, test frame, test emb, test truth, where the truth came from)."""
    emb = combine(embed_frame(meta, conf))  # [N, D]: the descriptors as the clustering combines them
    lab = labelled_mask(meta)
    sol_path = Path(meta.attrs["root"]) / "solution.csv"
    if sol_path.is_file():
        test = meta[~lab].reset_index(drop=True)
        sol = read_csv_str(sol_path).set_index("image_id")
        truth = sol.loc[test["image_id"], "identity"].to_numpy(dtype=object)
        return meta[lab].reset_index(drop=True), emb[lab], test, emb[~lab], truth, "competition test (solution.csv)"
    vc = conf["validate"]
    train = meta[lab].reset_index(drop=True)
    split = open_set_split(train.assign(_row=np.arange(len(train))), n_unknown=vc["n_unknown"],
                           query_fraction=vc["query_fraction"], seed=vc["seed"])
    db, q, solution = hide_answers(split)
    e = emb[lab]
    return db, e[db["_row"]], q, e[q["_row"]], solution["identity"].to_numpy(dtype=object), "split of train"


def quality(meta: pd.DataFrame, conf: dict) -> dict:
    train, emb_tr, test, emb_te, truth, source = _task(meta, conf)
    print(f"evaluating on: {source}; {len(train)} train photos, {len(test)} test photos")
    out: dict[str, dict] = {}
    for ds in sorted(test["dataset"].unique()):
        rows = (test["dataset"] == ds).to_numpy()
        e = emb_te[rows]
        res = {"n_images": int(rows.sum()), "n_identities": int(len(set(truth[rows])))}
        base = cluster.naive_baselines(e @ e.T, truth[rows])
        for name, b in base.items():
            res[name + " (hindsight)"] = {"ARI": b["ARI"], "threshold": b["threshold"]}
        out[ds] = res
    for variant, over in VARIANTS.items():
        vconf = copy.deepcopy(conf)
        vconf["cluster"].update(over)
        t = time.perf_counter()
        labels, det = cluster.cluster_competition(train, emb_tr, test, emb_te, vconf["cluster"], verbose=False)
        secs = time.perf_counter() - t
        for ds in out:
            rows = (test["dataset"] == ds).to_numpy()
            d = det[ds]
            out[ds][variant] = {"ARI": cluster.ari(truth[rows], labels[rows]), "method": d["method"],
                                "cut": d["cut"], "edge_cut": d["edge_cut"], "heldout_ARI": d["heldout_ARI"],
                                "n_clusters": d["n_clusters"], "seconds_all_datasets": secs,
                                **({"note": d["note"]} if d.get("note") else {})}
            if variant == "kit (default)":  # the same P(same) with its best cut in hindsight
                model = _refit(train, emb_tr, ds, vconf)
                if model is not None:
                    tr = (train["dataset"] == ds).to_numpy()
                    _, prob = cluster.predict_clusters(
                        model, emb_te[rows], test.loc[rows, "orientation"].to_numpy(), emb_train=emb_tr[tr],
                        train_labels=train.loc[tr, "identity"].to_numpy())
                    for method in ("average", "complete", "single"):
                        curve = cluster.ari_curve(prob, truth[rows], method)
                        out[ds][f"kit P, {method} (hindsight)"] = {"ARI": float(curve.max()),
                                                                   "cut": float(cluster.CUT_GRID[curve.argmax()])}
    return out


def _refit(train, emb_tr, ds, conf):
    rows = np.flatnonzero((train["dataset"] == ds).to_numpy())
    if not len(rows):
        return None
    try:
        cc = conf["cluster"]
        return cluster.fit_cluster_model(cluster.heldout_folds(train.iloc[rows], emb_tr[rows], cc), cc)
    except ValueError:
        return None


def timing(sizes: list[int], seed: int = 0) -> dict:
    """Seconds of cluster_matrix on random [N, N] scores with ~N/5 planted groups, per method and N; and of
    predict_clusters from random [N, 64] embeddings (pair features, P(same), average linkage)."""
    out = {}
    for n in sizes:
        rng = np.random.default_rng(seed)
        groups = rng.integers(0, max(1, n // 5), n)
        prob = rng.random((n, n), dtype=np.float32) * 0.5
        prob += 0.45 * (groups[:, None] == groups[None, :])
        prob = np.minimum(prob, prob.T)
        out[n] = {}
        for method in ("average", "complete", "components"):
            t = time.perf_counter()
            labels = cluster.cluster_matrix(prob, method, cut=0.5, edge_cut=0.7)
            out[n][method] = round(time.perf_counter() - t, 2)
            out[n][method + "_clusters"] = int(labels.max() + 1)
        del prob
        # end to end from embeddings: pair features (cosine, flanks, csls, rank) -> P(same) -> average linkage
        emb = rng.normal(size=(n, 64)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        names = DIRECT_FEATURES + NEIGHBOUR_FEATURES
        pm = cluster.PairModel(names, np.zeros(len(names), np.float32), np.ones(len(names), np.float32),
                               np.array([4.0, 0, 0, 2.0, -1.0]), -3.0)
        model = cluster.ClusterModel(pm, "average", 0.5, None, None, neighbours=5)
        t = time.perf_counter()
        cluster.predict_clusters(model, emb, np.where(rng.random(n) < 0.5, "left", "right"))
        out[n]["end_to_end_average"] = round(time.perf_counter() - t, 2)
        print(f"N={n:>6}: " + "  ".join(f"{m} {out[n][m]:.2f}s" for m in ("average", "complete", "components",
                                                                          "end_to_end_average")), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="2026-layout competition folder")
    ap.add_argument("--config")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--sizes", default="1000,2000,5000,10000", help="N for the timing table; empty skips it")
    ap.add_argument("--out", default=str(Path(__file__).with_name("cluster.json")))
    args = ap.parse_args(argv)
    conf = load_config(args.config, args.set)
    meta = read_competition(args.data, check_images=False)
    task_of(meta, "clustering")  # a 2025 folder stops here, saying which layout it needs
    result = {"data": str(Path(args.data).resolve()), "overrides": args.set, "quality": quality(meta, conf)}
    for ds, rows in result["quality"].items():
        print(f"\n{ds}: {rows['n_images']} test photos, {rows['n_identities']} individuals")
        print(f"  {'method':<34} {'ARI':>7}  details")
        for name, r in rows.items():
            if isinstance(r, dict):
                extra = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "ARI"}
                print(f"  {name:<34} {r['ARI']:7.4f}  {extra}")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if sizes:
        print("\nseconds: cluster_matrix on random [N, N] scores per method; end to end from [N, 64] embeddings:")
        result["timing_seconds"] = timing(sizes)
    Path(args.out).write_text(json.dumps(result, indent=2, default=float))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
