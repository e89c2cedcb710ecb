"""Benchmark the embedding stage and exact retrieval; writes bench/embed.json and prints a markdown table.

    .venv/bin/python bench/embed.py [--data COMPETITION] [--photos FOLDER] [--out bench/embed.json]

Measures, each against the naive way in the same run:
- extraction img/s, cold: the kit's loader (workers, JPEG draft decoding, batch 64) vs the organisers' starter
  style (batch 32, num_workers=0, full decode), on a competition's images and, with --photos, on large photos;
- warm cache: the same gallery re-embedded from the cache vs cold (the cache's whole point);
- exact top-K retrieval at 13k x 2k and 100k x 20k (random unit vectors, D=512), with a dense
  numpy argsort at 13k x 2k as the naive reference.
Sizes are small on a CPU; pass --full on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kit import embed  # noqa: E402
from kit.config import load_config  # noqa: E402
from kit.retrieve import topk_cosine  # noqa: E402


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"


def time_extract(backbone, paths, conf) -> float:
    t = time.perf_counter()
    embed.extract(backbone, paths, conf)
    return len(paths) / (time.perf_counter() - t)


def naive_extract(backbone, paths) -> float:
    """The starter-notebook way: full decode, batch 32, decode in the main process."""
    from PIL import Image

    t = time.perf_counter()
    pre = backbone.preprocess
    with torch.inference_mode():
        for s in range(0, len(paths), 32):
            x = torch.stack([pre(Image.open(p).convert("RGB")) for p in paths[s:s + 32]])
            backbone.net(x)
    return len(paths) / (time.perf_counter() - t)


def bench_extraction(paths: list[str], conf: dict, label: str) -> dict:
    backbone = embed.load_descriptor(conf["embed"])
    kit_conf = {**conf["embed"], "batch_size": 64}
    embed.extract(backbone, paths[:8], {**kit_conf, "num_workers": 0})  # warm-up: thread pools, allocator
    fast = time_extract(backbone, paths, kit_conf)
    naive = naive_extract(backbone, paths)
    with tempfile.TemporaryDirectory() as tmp:
        cc = Path(tmp)
        os.environ.pop("KIT_CACHE", None)
        t = time.perf_counter()
        embed.embed_paths(paths, kit_conf, cc, backbone)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        embed.embed_paths(paths, kit_conf, cc, backbone)
        warm = time.perf_counter() - t
    return {"images": len(paths), "source": label, "kit_img_s": fast, "naive_img_s": naive,
            "speedup": fast / naive, "cold_s": cold, "warm_s": warm, "warm_speedup": cold / warm}


def bench_retrieval(nq: int, ng: int, dim: int = 512, k: int = 100, naive: bool = False) -> dict:
    rng = np.random.default_rng(0)
    g = rng.normal(size=(ng, dim)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = rng.normal(size=(nq, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    t = time.perf_counter()
    s, i = topk_cosine(q, g, k, chunk_size=2048, device=dev, gallery_chunk=32768)
    kit_s = time.perf_counter() - t
    out = {"queries": nq, "gallery": ng, "dim": dim, "k": k, "kit_s": kit_s}
    if naive:
        t = time.perf_counter()
        dense = q @ g.T
        order = np.argsort(-dense, axis=1, kind="stable")[:, :k]
        out["naive_s"] = time.perf_counter() - t
        out["speedup"] = out["naive_s"] / kit_s
        # numpy's and torch's matmuls round differently, so near-equal scores may swap places: compare the
        # reference scores of the returned neighbours, not their indices
        got, want = np.take_along_axis(dense, i, 1), np.take_along_axis(dense, order, 1)
        assert np.allclose(got, want, atol=1e-5), "chunked top-K differs from the dense reference"
        out["same_index_share"] = float((order == i).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="competition folder (default: a fresh `kit synth` competition)")
    ap.add_argument("--photos", help="folder of large photos (e.g. ../shared/data/nyala-train)")
    ap.add_argument("--limit", type=int, default=256, help="images per extraction measurement")
    ap.add_argument("--full", action="store_true", help="GPU sizes: at least 4,096 images per measurement")
    ap.add_argument("--out", default=str(Path(__file__).with_name("embed.json")))
    ap.add_argument("--model", default="tf_efficientnet_lite0",
                    help="one descriptor (embed.model): the default `auto` may name several")
    args = ap.parse_args()

    conf = load_config(None, [f"embed.model={args.model}"])
    if args.full:  # a GPU: enough images for the loader and the model to reach their steady rate
        args.limit = max(args.limit, 4096)
    results: dict = {"machine": machine(), "model": conf["embed"]["model"], "extraction": [], "retrieval": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from kit.synth import make_competition

            data = make_competition(Path(tmp) / "synth", seed=0)
        from kit.data import read_competition

        paths = read_competition(data)["filepath"].tolist()[: args.limit]
        results["extraction"].append(bench_extraction(paths, conf, f"competition {Path(data).name}"))
    if args.photos:
        photos = sorted(str(p) for p in Path(args.photos).rglob("*.jpg"))[: args.limit]
        results["extraction"].append(bench_extraction(photos, conf, f"photos {Path(args.photos).name}"))
    results["retrieval"].append(bench_retrieval(2000, 13000, naive=True))
    results["retrieval"].append(bench_retrieval(20000, 100000))

    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"machine: {results['machine']}, model {results['model']}\n")
    print("| images | n | kit img/s | naive img/s | ratio | cold s | warm s | warm speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["extraction"]:
        print(f"| {r['source']} | {r['images']} | {r['kit_img_s']:.1f} | {r['naive_img_s']:.1f} | "
              f"{r['speedup']:.2f}x | {r['cold_s']:.1f} | {r['warm_s']:.2f} | {r['warm_speedup']:.0f}x |")
    print("\n| retrieval Q x N (D, k) | kit s | naive s | ratio |\n|---|---|---|---|")
    for r in results["retrieval"]:
        naive = f"{r['naive_s']:.2f} | {r['speedup']:.1f}x" if "naive_s" in r else "n/a | n/a"
        print(f"| {r['queries']} x {r['gallery']} ({r['dim']}, {r['k']}) | {r['kit_s']:.2f} | {naive} |")


if __name__ == "__main__":
    main()
