"""The metric head (kit/head.py) against the frozen descriptors, on a labelled competition's validation split.

Trains a head on the split's database (the validation queries' photos, and its unknown identities, absent from it)
and prints R-1 of the known validation queries by their best photo's cosine: frozen (the descriptors side by side,
as ``combine`` does), in the head's space, and the mean of both, with each head's training time. Global evidence
only: no local matching, no pair model, no threshold.

    python bench/head.py /tmp/nyala25 --seed 0 [--set head.noise=0.02 ...] [--try "{'pca': 0}" ...]
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kit import metrics, retrieve  # noqa: E402
from kit.config import load_config  # noqa: E402
from kit.data import read_competition  # noqa: E402
from kit.head import fit_head  # noqa: E402
from kit.pipeline import combine, validation_split  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("competition", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--try", action="append", default=[], dest="variants",
                    help="a dict of head settings to try beside the defaults, e.g. \"{'subcenters': 3}\"")
    args = ap.parse_args(argv)
    conf = load_config(None, [f"validate.seed={args.seed}", *args.overrides])
    meta = read_competition(args.competition, check_images=False)
    db, q, solution, embs = validation_split(meta, conf)
    x = combine(embs)
    xd, xq = x[db["_row"]], x[q["_row"]]
    labels = db["identity"].to_numpy(dtype=object)
    known = ~solution["new_identity"].to_numpy(bool)
    truth = solution["identity"].to_numpy(dtype=object)

    def r1(sims) -> float:
        ranked = retrieve.ranked_labels(sims[known], labels, 1)
        return float(metrics.rank_k(ranked, truth[known], ks=(1,))["R-1"])

    frozen = r1(xq @ xd.T)
    print(f"{int(known.sum())} known queries, {len(db)} database photos of {len(set(labels))} identities; "
          f"frozen R-1 {frozen:.3f}")
    rows = []
    for variant in [{}] + [ast.literal_eval(v) for v in args.variants]:
        hc = {**conf["head"], **variant}
        t = time.perf_counter()
        head = fit_head(xd, labels, hc)
        seconds = time.perf_counter() - t
        hd, hq = head.project(xd), head.project(xq)
        row = {"variant": variant, "seconds": seconds, "frozen": frozen, "head": r1(hq @ hd.T),
               "mean": r1((hq @ hd.T + xq @ xd.T) / 2)}
        rows.append(row)
        print(f"{variant or 'defaults'}: R-1 head {row['head']:.3f}, mean of head and frozen {row['mean']:.3f} "
              f"({seconds:.1f} s to train)", flush=True)
    return rows


if __name__ == "__main__":
    main()
