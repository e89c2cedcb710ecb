"""Fine-tuned vs pretrained, on the held-out identities of a ``kit train`` run.

    python bench/train.py DATA OUT [--size 224]

Rebuilds the run's identity-disjoint validation split from OUT/train_config.yaml (same seed and shares),
embeds its photos through the embed stage (kit.embed.embed_paths, cached) with

- the pretrained backbone, pooled features, at ``--size`` (the kit's default embedding; 224 px for lite0),
- the checkpoint in OUT (``embed.weights=OUT``, the way ``kit submit`` would use it),

and prints R-1, R-5, mAP and the open-set score of each (kit.train.heldout_metrics), the epoch-0 row of the run's
history (pretrained at the training size), and the fine-tuned / pretrained R-1 ratios.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import yaml

from kit import embed
from kit.cache import cache_root
from kit.config import load_config
from kit.train import METRICS, heldout_metrics, holdout_split, training_frame


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=224, help="side in px of the pretrained baseline")
    args = ap.parse_args()

    conf = load_config(None)
    run = yaml.safe_load((Path(args.out) / "train_config.yaml").read_text())
    conf["train"].update(run["train"])
    conf["embed"].update({k: run["embed"][k] for k in ("model", "weights", "allow_random_weights")})
    _, val = holdout_split(training_frame(args.data, check_images=False), conf["train"])
    paths = val["filepath"].tolist()

    rows = {}
    for name, ec in [(f"pretrained @ {args.size}px", {**conf["embed"], "image_size": args.size}),
                     ("fine-tuned (embed.weights=OUT)", {**conf["embed"], "weights": args.out})]:
        t = time.perf_counter()
        emb = embed.embed_paths(paths, ec, cache_root(conf["cache"]))
        rows[name] = {**heldout_metrics(emb, val), "seconds": time.perf_counter() - t}
    hist = pd.read_csv(Path(args.out) / "history.csv")
    if (hist["epoch"] == 0).any():
        size = run["train"]["image_size"] or "default"
        rows[f"pretrained @ {size}px (run's epoch 0)"] = hist[hist["epoch"] == 0].iloc[0][list(METRICS)].to_dict()
    table = pd.DataFrame(rows).T
    n_known = int(((val["split"] == "query") & ~val["new_identity"]).sum())
    print(f"{len(val)} held-out photos of {val['identity'].nunique()} identities; {n_known} known queries, "
          f"{int(val['new_identity'].sum())} unknown")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    tuned = table.loc["fine-tuned (embed.weights=OUT)", "R-1"]
    for name in table.index:
        if name.startswith("pretrained"):
            print(f"R-1 ratio fine-tuned / {name}: {tuned / table.loc[name, 'R-1']:.2f}x")


if __name__ == "__main__":
    main()
