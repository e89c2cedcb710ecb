"""How much a submission swings when one identity is renamed (issue 20, case 6).

A name is a label, not evidence: renaming one identity of one dataset should leave the other datasets' predictions
exactly as they were, and move the renamed dataset's score little. This renames one database identity (a different
one each time, in the dataset named by --dataset) ``--renamings`` times, submits with ``configs/demo.yaml`` plus
any ``--set``, and prints the score of each run against the solution, their spread, and how many predictions of the
OTHER datasets changed against the unrenamed run.

    python bench/renaming.py /tmp/syn --renamings 10 [--set rerank.enabled=false]

The competition is made first with ``kit synth /tmp/syn --seed 0 --identities 30`` (bench/README.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kit import metrics, pipeline  # noqa: E402
from kit.config import load_config  # noqa: E402
from kit.data import labelled_mask, read_competition  # noqa: E402
from kit.io import read_csv_str  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("competition", type=Path)
    ap.add_argument("--renamings", type=int, default=10)
    ap.add_argument("--dataset", default=None, help="the dataset whose identities are renamed (default: the first)")
    ap.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"))
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args(argv)
    conf = load_config(args.config, args.overrides)
    meta = read_competition(args.competition, check_images=False)
    solution = read_csv_str(args.competition / "solution.csv")
    solution["new_identity"] = solution["new_identity"].astype(str).str.lower() == "true"
    name = args.dataset or sorted(meta["dataset"].unique())[0]
    lab = labelled_mask(meta)
    idents = sorted(meta.loc[lab & (meta["dataset"] == name), "identity"].unique())
    picks = np.random.default_rng(0).choice(len(idents), size=min(args.renamings, len(idents)), replace=False)
    plan = pipeline.plan_matching(meta, conf, verbose=False)

    def run(old: str | None) -> tuple[float, np.ndarray, float]:
        m, sol = meta.copy(), solution.copy()
        if old is not None:  # the same animal under a new name, in the database and in the answer key
            m.loc[m["identity"] == old, "identity"] = f"renamed-{old}"
            sol.loc[sol["identity"] == old, "identity"] = f"renamed-{old}"
        t = time.perf_counter()
        preds, _ = pipeline.submit(m, conf, plan=plan)
        seconds = time.perf_counter() - t
        preds = preds.assign(identity=preds["identity"].str.replace("renamed-", "", regex=False))
        score, _ = metrics.score_2025(solution, preds)
        return float(score), preds["identity"].to_numpy(dtype=object), seconds

    base, base_pred, secs = run(None)
    other = (meta.loc[~lab, "dataset"] != name).to_numpy()
    print(f"unrenamed: score {base:.4f} ({secs:.0f} s)", flush=True)
    scores, changed = [], []
    for i in picks:
        s, pred, secs = run(idents[i])
        scores.append(s)
        changed.append(int((pred[other] != base_pred[other]).sum()))
        print(f"renamed {name}/{idents[i]}: score {s:.4f}, {changed[-1]} of {int(other.sum())} predictions of the "
              f"other datasets changed ({secs:.0f} s)", flush=True)
    out = {"base": base, "scores": scores, "min": min(scores), "max": max(scores), "sd": float(np.std(scores)),
           "changed_other": changed}
    print(f"score over {len(scores)} renamings: {out['min']:.4f} to {out['max']:.4f} (sd {out['sd']:.4f}, unrenamed "
          f"{base:.4f}); other datasets' predictions changed in {sum(c > 0 for c in changed)} of {len(changed)} runs")
    return out


if __name__ == "__main__":
    main()
