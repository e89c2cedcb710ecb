"""Does local matching help? The global-only and the fused pipeline on an open-set split of a labelled competition.

    .venv/bin/python bench/rerank_quality.py COMPETITION [--queries 150] [--topk 10] [--resize 256]
        [--keypoints 256] [--set KEY=VALUE ...] [--out bench/rerank_quality.json]

The split is kit's own (splits.open_set_split, seed 0); a seeded subsample of its queries (known and
unknown) goes through ``kit.pipeline.identify`` with a plan matching each query's and each database photo's
``--topk`` first candidates (``rerank.enabled=true``), so a CPU run stays bounded. For each pipeline it reports
R-1 and R-5 on the known queries, and the open-set score sqrt(BAKS*BAUS) of the top identity's score with the
threshold best in hindsight (the same optimistic rule for every pipeline, so the comparison is fair; `kit
validate` reports the calibrated one).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kit import metrics, openset, pipeline  # noqa: E402
from kit.pipeline.identification import identify  # noqa: E402
from kit.pipeline.local import plan_matching  # noqa: E402
from kit.config import load_config  # noqa: E402
from kit.data import labelled_mask, read_competition  # noqa: E402
from kit.retrieve import ranked_labels  # noqa: E402
from kit.splits import hide_answers, open_set_split  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--queries", type=int, default=150)
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--resize", type=int, default=256)
    ap.add_argument("--keypoints", type=int, default=256)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default=str(Path(__file__).with_name("rerank_quality.json")))
    args = ap.parse_args()

    conf = load_config(None, [f"rerank.resize={args.resize}", "rerank.enabled=true",
                              f"rerank.max_keypoints={args.keypoints}", *args.set])
    meta = read_competition(args.data)
    lab = meta[labelled_mask(meta)].reset_index(drop=True)
    embs = pipeline.embed_frame(lab, conf)  # {descriptor: [N, D]}
    split = open_set_split(lab.assign(_row=np.arange(len(lab))), n_unknown=500, query_fraction=0.3, seed=0)
    db, q, sol = hide_answers(split)
    pick = np.sort(np.random.default_rng(0).choice(len(q), size=min(args.queries, len(q)), replace=False))
    q, sol = q.iloc[pick].reset_index(drop=True), sol.iloc[pick].reset_index(drop=True)
    plan = plan_matching(lab, conf)
    plan.topk = min(plan.topk, args.topk) if plan.scorers else 0  # local matching on each pair's first --topk
    t = time.perf_counter()
    _, details = identify(db, q, {d: e[db["_row"]] for d, e in embs.items()},
                          {d: e[q["_row"]] for d, e in embs.items()}, conf, plan)
    per_pipe: dict[str, dict[str, list]] = {}
    for name, pipes in sorted(details.items()):  # each dataset's queries against its own database
        labels = db.loc[db["dataset"] == name, "identity"].to_numpy()
        for pipe, det in pipes.items():
            ev, qi = det["evidence"], det["query_index"]
            acc = per_pipe.setdefault(pipe, {"ranked": [], "truth": [], "unknown": [], "score": [], "top": []})
            acc["ranked"] += list(ranked_labels(ev["sims"], labels, 5))
            acc["truth"] += list(sol.loc[qi, "identity"].to_numpy())
            acc["unknown"] += list(sol.loc[qi, "new_identity"].to_numpy())
            acc["score"] += list(ev["score"])
            acc["top"] += list(ev["top_identity"])
    seconds = time.perf_counter() - t
    rows = {}
    for pipe, acc in per_pipe.items():
        truth, unknown = np.array(acc["truth"], object), np.array(acc["unknown"], bool)
        ranked = np.array(acc["ranked"], object)
        r = metrics.rank_k(ranked[~unknown], truth[~unknown], ks=(1, 5))
        # pooled over datasets: the score here is one threshold for all, a lower bound on per-dataset tau
        _, best = openset.choose_threshold(np.array(acc["score"]), np.array(acc["top"], object) == truth, unknown,
                                           truth)
        rows[pipe] = {**r, "score_hindsight": best}
    result = {"data": str(args.data), "queries": len(q), "known": int((~unknown).sum()), "topk": args.topk,
              "resize": args.resize, "keypoints": args.keypoints, "rerank_seconds": seconds, "pipelines": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{len(q)} queries ({int((~unknown).sum())} known), local matching on the first {plan.topk} candidates, "
          f"{args.keypoints} keypoints at {args.resize} px ({plan.why}); identify took {seconds:.0f} s\n")
    print("| pipeline | R-1 | R-5 | score (tau in hindsight) |\n|---|---|---|---|")
    for name, m in rows.items():
        print(f"| {name} | {m['R-1']:.3f} | {m['R-5']:.3f} | {m['score_hindsight']:.3f} |")


if __name__ == "__main__":
    main()
