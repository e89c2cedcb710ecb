"""Open-set benchmark: the kit's calibrated new-individual decision against the naive baseline.

    python bench/openset.py COMPETITION [--splits 5] [--validate-seeds 5] [--set KEY=VALUE ...]

COMPETITION is a 2025-layout folder with its answer key (solution.csv), e.g. one made by
`kit import-folders ../shared/data/nyala-train /tmp/nyala-comp --dataset Nyala`.

Naive baseline (the Kaggle starters): the kit's default features (ImageNet lite0), cosine top-1 identity, and
new_individual below a threshold: a fixed tau = 0.6, and the tau best in hindsight (chosen by looking at the
answers). Kit: the full default pipeline, exactly the `kit submit` flow (held-out calibration on the database,
open-set score chosen by cross-validation, tau from the identity bootstrap), plus an ablation with the plain
top-1 score (openset.candidates=[top1]) that isolates the threshold choice. Oracle: perfect open-set calls with
the kit's top-1 identities (sqrt of balanced top-1 accuracy): no threshold can beat it.

Split 0 is the competition as given; splits 1.. re-split all of its images (labels from solution.csv) into new
database/query sets with disjoint unknown identities (same files: the embedding cache is reused). On each split
the kit's score is compared with the best tau in hindsight on its own open-set score (the gap).
Then `kit validate` (a held-out split of the labelled part only) runs for --validate-seeds seeds.

Writes bench/openset.json and prints a markdown table. Reads solution.csv only to score.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kit import metrics, openset, retrieve  # noqa: E402
from kit.config import load_config  # noqa: E402
from kit.data import labelled_mask, read_competition, read_csv_str  # noqa: E402
from kit import pipeline  # noqa: E402
from kit.pipeline import combine, embed_frame, submit  # noqa: E402
from kit.report import openset_analysis  # noqa: E402
from kit.splits import open_set_split  # noqa: E402

NAIVE_TAU = 0.6  # the fixed threshold of the Kaggle starter notebooks


def resplit(meta: pd.DataFrame, truth: pd.Series, seed: int, unknown_fraction: float, query_fraction: float
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metadata, solution) of a fresh open-set split of every image of ``meta`` (true identities ``truth``,
    indexed like meta); same files, new database/query roles."""
    full = meta.assign(identity=truth.to_numpy())
    s = open_set_split(full, unknown_fraction=unknown_fraction, query_fraction=query_fraction, seed=seed)
    out = meta.copy()
    out["split"] = s["split"].to_numpy()
    out["identity"] = np.where(out["split"] == "database", s["identity"], "")
    out.attrs.update(meta.attrs)
    q = s[s["split"] == "query"]
    solution = q[["image_id", "identity", "dataset", "new_identity"]].reset_index(drop=True)
    return out, solution


def naive(meta: pd.DataFrame, emb: np.ndarray, solution: pd.DataFrame, conf: dict) -> dict[str, dict]:
    """Per dataset: cosine top-1 with a fixed tau and with the tau best in hindsight."""
    lab = labelled_mask(meta)
    db, q = meta[lab].reset_index(drop=True), meta[~lab].reset_index(drop=True)
    emb_db, emb_q = emb[lab], emb[~lab]
    sol = solution.set_index("image_id").loc[q["image_id"]]
    rc = conf["retrieve"]
    out = {}
    for name, qpart in q.groupby("dataset", sort=True):
        dmask = (db["dataset"] == name).to_numpy()
        rows = q.index.get_indexer(qpart.index)
        identities, id_scores = retrieve.identity_scores(emb_q[rows] @ emb_db[dmask].T,
                                                         db.loc[dmask, "identity"].to_numpy(object),
                                                         rc["aggregate"], rc["topm"])
        top = id_scores.argmax(axis=1)
        ev = {"top_identity": identities[top], "score": id_scores[np.arange(len(top)), top]}
        truth = sol["identity"].to_numpy(object)[rows]
        unknown = sol["new_identity"].to_numpy(bool)[rows]
        correct = (ev["top_identity"] == truth) & ~unknown
        h_tau, h_score = openset.choose_threshold(ev["score"], correct, unknown, truth)
        out[name] = {"fixed": openset.score_at(ev["score"], correct, unknown, truth, NAIVE_TAU)[2],
                     "hindsight": h_score, "hindsight_tau": h_tau,
                     "oracle": openset.score_calls(unknown, correct, unknown, truth)[2]}
    return out


def kit_run(meta: pd.DataFrame, solution: pd.DataFrame, conf: dict) -> dict[str, dict]:
    """Per dataset: the kit's score (submit flow), its tau and open-set score, and the hindsight gap."""
    pred, details = submit(meta, conf)
    sol = solution.set_index("image_id").loc[pred["image_id"]].reset_index()
    _, table = metrics.score_2025(sol, pred)
    out = {}
    for name, det in details.items():
        qi = det["query_index"]
        truth = sol.loc[qi, "identity"].to_numpy(object)
        unknown = sol.loc[qi, "new_identity"].to_numpy(bool)
        correct = (det["evidence"]["top_identity"] == truth) & ~unknown
        h_tau, h_score = openset.choose_threshold(det["openset_score"], correct, unknown, truth)
        score = float(table.loc[name, "score"])
        out[name] = {"score": score, "candidate": det["candidate"], "tau": det["tau"],
                     "heldout_estimate": det["heldout_score"], "hindsight": h_score, "hindsight_tau": h_tau,
                     "gap": h_score - score}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("competition")
    ap.add_argument("--splits", type=int, default=5, help="split 0 = as given, then re-splits")
    ap.add_argument("--validate-seeds", type=int, default=5)
    ap.add_argument("--unknown-fraction", type=float, default=0.25, help="re-splits: share of unknown identities")
    ap.add_argument("--query-fraction", type=float, default=0.3, help="re-splits: share of known images as queries")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("openset.json")))
    args = ap.parse_args(argv)

    conf = load_config(None, args.set)
    conf_top1 = load_config(None, args.set + ["openset.candidates=[top1]"])
    meta = read_competition(args.competition, check_images=False)
    solution0 = read_csv_str(Path(args.competition) / "solution.csv")
    solution0["new_identity"] = solution0["new_identity"].str.lower().eq("true")
    truth = meta["identity"].copy()
    qmask = ~labelled_mask(meta)
    truth[qmask] = solution0.set_index("image_id").loc[meta.loc[qmask, "image_id"], "identity"].to_numpy()
    t0 = time.perf_counter()
    emb = combine(embed_frame(meta, conf))  # every image, once (cached); [N, D]
    t_embed = time.perf_counter() - t0

    splits = []
    for k in range(args.splits):
        m, sol = (meta, solution0) if k == 0 else resplit(meta, truth, 1000 + k, args.unknown_fraction,
                                                          args.query_fraction)
        t = time.perf_counter()
        kit = kit_run(m, sol, conf)
        t_kit = time.perf_counter() - t
        top1 = kit_run(m, sol, conf_top1)
        base = naive(m, emb, sol, conf)
        for name in sorted(kit):
            row = {"split": k, "dataset": name, "n_queries": int((sol["dataset"] == name).sum()),
                   "kit": kit[name]["score"], "kit_candidate": kit[name]["candidate"], "kit_tau": kit[name]["tau"],
                   "kit_heldout_estimate": kit[name]["heldout_estimate"],
                   "kit_hindsight": kit[name]["hindsight"], "kit_gap": kit[name]["gap"],
                   "kit_top1": top1[name]["score"], "kit_top1_gap": top1[name]["gap"],
                   "naive_fixed": base[name]["fixed"], "naive_hindsight": base[name]["hindsight"],
                   "oracle": base[name]["oracle"], "kit_seconds": t_kit}
            splits.append(row)
            print(f"split {k} {name}: kit {row['kit']:.3f} ({row['kit_candidate']}, gap {row['kit_gap']:.3f}) "
                  f"naive hindsight {row['naive_hindsight']:.3f}  [{t_kit:.1f}s]", file=sys.stderr)

    validate = []
    for seed in range(args.validate_seeds):
        vconf = load_config(None, args.set + [f"validate.seed={seed}"])
        _, info = pipeline.validate(meta, vconf)
        for name, pipes in openset_analysis(info["details"], info["solution"]).items():
            e = pipes["global"]
            validate.append({"seed": seed, "dataset": name, "candidate": e["candidate"],
                             "achieved": e["validation"]["score"], "hindsight": e["hindsight"]["score"],
                             "gap": e["hindsight"]["gap"], "heldout_estimate": e["heldout_score"],
                             "naive_hindsight": e["top1_hindsight_score"]})

    sp, va = pd.DataFrame(splits), pd.DataFrame(validate)
    summary = {
        "splits": len(sp["split"].unique()),
        "kit_mean": float(sp["kit"].mean()), "naive_hindsight_mean": float(sp["naive_hindsight"].mean()),
        "naive_fixed_mean": float(sp["naive_fixed"].mean()), "kit_top1_mean": float(sp["kit_top1"].mean()),
        "oracle_mean": float(sp["oracle"].mean()),
        "ratio_kit_over_naive_hindsight": float(sp["kit"].mean() / sp["naive_hindsight"].mean()),
        "kit_gap_mean": float(sp["kit_gap"].mean()), "kit_gap_max": float(sp["kit_gap"].max()),
        "kit_gap_within_0.02": int((sp["kit_gap"] <= 0.02).sum()),
        "validate_gap_mean": float(va["gap"].mean()) if len(va) else None,
        "validate_gap_within_0.02": int((va["gap"] <= 0.02).sum()) if len(va) else None,
        "validate_achieved_mean": float(va["achieved"].mean()) if len(va) else None,
        "validate_naive_hindsight_mean": float(va["naive_hindsight"].mean()) if len(va) else None,
    }
    record = {"competition": str(args.competition), "overrides": args.set,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
              "embed_seconds": t_embed, "splits": splits, "validate": validate, "summary": summary}
    Path(args.out).write_text(json.dumps(record, indent=2))

    print("| split | dataset | kit | winner | kit hindsight | gap | kit top-1 only | naive tau=0.6 | "
          "naive hindsight | oracle |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in splits:
        print(f"| {r['split']} | {r['dataset']} | {r['kit']:.3f} | {r['kit_candidate']} | {r['kit_hindsight']:.3f} | "
              f"{r['kit_gap']:.3f} | {r['kit_top1']:.3f} | {r['naive_fixed']:.3f} | {r['naive_hindsight']:.3f} | "
              f"{r['oracle']:.3f} |")
    print(f"| mean | | {summary['kit_mean']:.3f} | | | {summary['kit_gap_mean']:.3f} | {summary['kit_top1_mean']:.3f} "
          f"| {summary['naive_fixed_mean']:.3f} | {summary['naive_hindsight_mean']:.3f} | {summary['oracle_mean']:.3f} |")
    print(f"\nkit / naive-hindsight = {summary['ratio_kit_over_naive_hindsight']:.2f}x; kit gap <= 0.02 on "
          f"{summary['kit_gap_within_0.02']}/{len(sp)} splits")
    if len(va):
        print("\n| validate seed | dataset | winner | achieved | hindsight | gap | held-out estimate | naive hindsight |")
        print("|---|---|---|---:|---:|---:|---:|---:|")
        for r in validate:
            print(f"| {r['seed']} | {r['dataset']} | {r['candidate']} | {r['achieved']:.3f} | {r['hindsight']:.3f} | "
                  f"{r['gap']:.3f} | {r['heldout_estimate']:.3f} | {r['naive_hindsight']:.3f} |")
        print(f"\nvalidate: mean gap {summary['validate_gap_mean']:.3f}, <= 0.02 on "
              f"{summary['validate_gap_within_0.02']}/{len(va)}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
