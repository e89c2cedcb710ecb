"""Benchmark of kit.rerank: ALIKED images/s, LightGlue pairs/s single-pair vs batched, re-rank time projection.

    python bench/rerank.py                # sizes itself to the device: a few pairs on CPU, hundreds on a GPU
    python bench/rerank.py --pairs 512 --single 32 --batch 256

Features come from real ALIKED runs on synthetic textured photos (a card and its warped copy), so LightGlue sees
real descriptors and real match structure; the budgets 256 / 512 / 1024 are filled in top-k mode. "single" is
kornia's own forward, one pair at a time: non-adaptive (same maths as the batched path) and adaptive (kornia's
default early stopping + point pruning, the usual way LightGlue is run). Every ratio is measured in the same run
on the same device. Writes bench/rerank.json and prints a markdown table.
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

import kornia.feature as KF
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kit import rerank  # noqa: E402
from kit.cache import cache_root  # noqa: E402

QUERIES, TOPK = 2135, 100  # AnimalCLEF25 test queries x shortlist length


def _card(seed: int, w: int = 512, h: int = 384) -> np.ndarray:
    """Discs of random colour and size on a gradient: a textured stand-in photo, [h, w, 3] uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([xx / w, yy / h, 0.5 + 0 * xx], -1).astype(np.float32) * 0.6
    for _ in range(400):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2, 18)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 1, 3)
    return (img * 255).astype(np.uint8)


def _warped(img: np.ndarray) -> np.ndarray:
    import kornia.geometry.transform as KGT

    t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    h, w = img.shape[:2]
    m = KGT.get_rotation_matrix2d(torch.tensor([[w / 2, h / 2]]), torch.tensor([10.0]), torch.tensor([[0.9, 0.9]]))
    hom = torch.cat([m, torch.tensor([[[0.0, 0.0, 1.0]]])], 1)
    return KGT.warp_perspective(t, hom, (h, w), padding_mode="border")[0].permute(1, 2, 0).byte().numpy()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    gpu = torch.cuda.is_available()
    ap.add_argument("--images", type=int, default=32 if gpu else 3, help="images timed for extraction")
    ap.add_argument("--pairs", type=int, default=1024 if gpu else 8, help="pairs timed in the batched path")
    ap.add_argument("--single", type=int, default=32 if gpu else 2, help="pairs timed one at a time")
    ap.add_argument("--batch", type=int, default=256 if gpu else 8, help="LightGlue pairs per forward")
    ap.add_argument("--kpts", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--out", default=str(Path(__file__).with_name("rerank.json")))
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="kit-bench-rerank-"))
    paths = [str(tmp / "card.png"), str(tmp / "warped.png")]
    card = _card(0)
    Image.fromarray(card).save(paths[0])
    Image.fromarray(_warped(card)).save(paths[1])
    img = torch.from_numpy(card).permute(2, 0, 1)

    base = {"resize": 512, "device": "auto", "num_workers": 0, "batch_size": args.batch}
    m512 = rerank.LocalMatcher({**base, "max_keypoints": 512})
    dev = m512.device
    m512.extract_image(img)  # warm-up: loads the net, first-call allocations
    _sync(dev)
    t = time.perf_counter()
    for _ in range(args.images):
        m512.extract_image(img)
    _sync(dev)
    ips = args.images / (time.perf_counter() - t)

    rows = []
    for kp in args.kpts:
        m = rerank.LocalMatcher({**base, "max_keypoints": kp})
        f = m.extract(paths)  # no cache: fresh features at this budget
        n_kp = int(f["count"].min())
        # kornia's default LightGlue: early stopping + point pruning, the same weights
        lg_adaptive = KF.LightGlue(None, input_dim=m.spec.dim, filter_threshold=m.conf["match_threshold"]).eval()
        lg_adaptive.load_state_dict(m.lightglue.state_dict())
        lg_adaptive.to(dev)

        def side(r: int) -> dict:
            return {"keypoints": torch.from_numpy(f["keypoints"][r:r + 1]).to(dev),
                    "descriptors": torch.from_numpy(f["descriptors"][r:r + 1].astype(np.float32)).to(dev),
                    "image_size": torch.from_numpy(f["image_size"][r:r + 1]).to(dev)}

        def timed(fn, n: int) -> float:
            fn()  # warm-up
            _sync(dev)
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            _sync(dev)
            return n / (time.perf_counter() - t0)

        single = timed(lambda: m.match_single(f, 0, f, 1), args.single)
        with torch.inference_mode():
            data = {"image0": side(0), "image1": side(1)}
            single_adaptive = timed(lambda: lg_adaptive(data), args.single)
        pairs = np.tile([[0, 1]], (args.pairs, 1))
        m.match_pairs(f, f, pairs[: min(args.batch, args.pairs)], progress=False)  # warm-up
        _sync(dev)
        t0 = time.perf_counter()
        matches, _ = m.match_pairs(f, f, pairs, progress=False)
        _sync(dev)
        batched = args.pairs / (time.perf_counter() - t0)
        rows.append({"keypoints": kp, "keypoints_found": n_kp, "matches": int((matches[0] > -1).sum()),
                     "single_pairs_per_s": single, "single_adaptive_pairs_per_s": single_adaptive,
                     "batched_pairs_per_s": batched, "speedup_vs_single": batched / single,
                     "speedup_vs_adaptive": batched / single_adaptive})

    # the cached path a kit run takes, at 512 keypoints from a warm feature cache: kit.rerank.score_pairs (feature
    # cache read, gathers, chunks, pair-score cache). Pairs are cached per photo pair, so the q x k pairs are
    # between distinct files (copies of the two photos)
    cache_dir = cache_root({"enabled": True, "dir": str(tmp / "cache")})  # $KIT_CACHE still wins, as in a run
    q, k = (16, TOPK) if dev.type == "cuda" else (2, args.pairs // 2)
    copies = []
    for side, n in ((0, q), (1, k)):
        copies.append([str(tmp / f"copy-{side}-{i}.png") for i in range(n)])
        for c in copies[-1]:
            Path(c).write_bytes(Path(paths[side]).read_bytes())
    scorer = rerank.make_scorer(m512.conf["extractor"], rerank.rerank_conf({**base, "max_keypoints": 512}))
    scorer.extract(copies[0] + copies[1], cache_dir)
    t0 = time.perf_counter()
    rerank.score_pairs(scorer, copies[0], copies[1], np.stack(np.divmod(np.arange(q * k), k), 1), cache_dir)
    _sync(dev)
    shortlist_rate = q * k / (time.perf_counter() - t0)

    at512 = next((r for r in rows if r["keypoints"] == 512), rows[0])
    n_pairs = QUERIES * TOPK
    result = {
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else f"cpu ({os.cpu_count()} cores, "
                                                                          f"{torch.get_num_threads()} threads)",
        "load_average_1min": os.getloadavg()[0],  # other jobs on a shared machine depress every rate here
        "torch": torch.__version__, "python": platform.python_version(),
        "kornia": __import__("kornia").__version__, "batch_size": args.batch, "amp": m512.policy.precision,
        "aliked_images_per_s": ips, "aliked_image": "512x384 px, budget 512",
        "lightglue": rows,
        "projection": {"pairs": n_pairs, "keypoints": at512["keypoints"],
                       "batched_s": n_pairs / at512["batched_pairs_per_s"],
                       "single_s": n_pairs / at512["single_pairs_per_s"],
                       "single_adaptive_s": n_pairs / at512["single_adaptive_pairs_per_s"],
                       "score_pairs_pairs_per_s": shortlist_rate,
                       "score_pairs_measured": f"{q} queries x {k} from cache",
                       "score_pairs_s": n_pairs / shortlist_rate,
                       "note": "matching only, features already cached; projected from the rates above"},
    }
    Path(args.out).write_text(json.dumps(result, indent=2))

    print(f"device: {result['device']}, torch {result['torch']}, kornia {result['kornia']}, "
          f"batch {args.batch}, amp {result['amp']}\n")
    print(f"ALIKED-n16 extraction (512x384, 512 keypoints): **{ips:.2f} images/s**\n")
    print("| keypoints | single-pair (pairs/s) | single adaptive (pairs/s) | batched (pairs/s) "
          "| batched / single | batched / adaptive |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['keypoints']} | {r['single_pairs_per_s']:.2f} | {r['single_adaptive_pairs_per_s']:.2f} "
              f"| {r['batched_pairs_per_s']:.2f} | {r['speedup_vs_single']:.2f}x | {r['speedup_vs_adaptive']:.2f}x |")
    p = result["projection"]
    print(f"\nRe-rank {QUERIES} queries x top-{TOPK} = {n_pairs:,} pairs at {p['keypoints']} keypoints, from cache "
          f"(projected): batched {p['batched_s'] / 3600:.2f} h, single-pair {p['single_s'] / 3600:.2f} h, "
          f"adaptive single-pair {p['single_adaptive_s'] / 3600:.2f} h; through score_pairs "
          f"({p['score_pairs_measured']}: {shortlist_rate:.2f} pairs/s) {p['score_pairs_s'] / 3600:.2f} h")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
