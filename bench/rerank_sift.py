"""Benchmark of the CPU-fast matcher: RootSIFT extraction photos/s, and mutual-NN + ratio pairs/s, batched (one
photo against 16 per similarity block, both directions at once) against one pair per call, in the same run.

    python bench/rerank_sift.py --photos ../shared/data/nyala-train --limit 64

Real photos give real descriptors and real match structure. Writes bench/rerank_sift.json and prints a table.
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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kit.rerank import make_scorer, rerank_conf  # noqa: E402
from kit.rerank.mnn import mnn_scores, prepare  # noqa: E402


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", default="../shared/data/nyala-train")
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--keypoints", type=int, default=512)
    ap.add_argument("--out", default=str(Path(__file__).with_name("rerank_sift.json")))
    args = ap.parse_args()
    paths = sorted(str(p) for p in Path(args.photos).rglob("*.jpg"))[:args.limit]
    scorer = make_scorer("sift", rerank_conf({"max_keypoints": args.keypoints, "resize": 512, "num_workers": 0}))
    t = time.perf_counter()
    feats = scorer.extract(paths)  # no cache: really extracted
    extract_s = time.perf_counter() - t
    n = len(paths)
    pairs = np.array([[i, j] for i in range(n) for j in range(i + 1, n)])
    t = time.perf_counter()
    batched = scorer.score(feats, feats, pairs)
    batched_s = time.perf_counter() - t
    single_pairs = pairs[: max(32, len(pairs) // 20)]
    gal = prepare(feats["descriptors"], feats["count"])
    cnt = torch.from_numpy(feats["count"].astype(np.int64))
    t = time.perf_counter()
    with torch.inference_mode():
        single = [mnn_scores(gal[a, :int(cnt[a])], gal[b:b + 1], cnt[b:b + 1])["n_matches"].item()
                  for a, b in single_pairs]
    single_s = time.perf_counter() - t
    assert np.array_equal(np.array(single, np.float32), batched["n_matches"][:len(single_pairs)]), "batched != single"
    res = {"machine": machine(), "photos": n, "keypoints": args.keypoints,
           "extract_photos_per_s": n / extract_s,
           "batched_pairs_per_s": len(pairs) / batched_s, "single_pairs_per_s": len(single_pairs) / single_s,
           "note": "a batched pair is matched in both directions at once; single = one pair per call, one direction"}
    res["ratio"] = res["batched_pairs_per_s"] / res["single_pairs_per_s"]
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"machine: {res['machine']}\n")
    print("| RootSIFT, 512 px | photos/s | pairs/s batched | pairs/s one per call | ratio |\n|---|---|---|---|---|")
    print(f"| {n} photos, {args.keypoints} keypoints | {res['extract_photos_per_s']:.1f} | "
          f"{res['batched_pairs_per_s']:.0f} | {res['single_pairs_per_s']:.0f} | {res['ratio']:.1f}x |")


if __name__ == "__main__":
    main()
