"""What each stage of bench/gpu.py times: embedding, local matching, the re-rank, training (issue 15).

Each ``bench_<stage>(rep, sizes, ...)`` runs one stage and hands its figures to ``rep.add`` (bench/gpu.py's Report,
which knows each figure's unit and goal) and its shapes to ``rep.doc``; the helpers above them pin the process to a
Kaggle notebook's 4 cores, write the photo pool, and time the pieces. bench/gpu.py's docstring says what each stage
measures and why.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from kit import embed
from kit.cli import main as kit_main
from kit.config import load_config
from kit.device import policy as device_policy
from kit.errors import WeightsError
from kit.rerank import EXTRACTORS, SiftScorer, make_scorer, rerank_conf, resolve_weights, score_pairs

if TYPE_CHECKING:
    from gpu import Report, Sizes

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ROOT / "bench" / "gpu-inputs"  # bench/gpu_inputs.py writes it; the device run carries it
MODELS = {"megadescriptor_l384": "configs/megadescriptor-l-384.yaml", "efficientnet_b3": "configs/efficientnet-b3.yaml"}
MATCHERS = {"sift": "sift", "aliked_n16": "aliked-n16", "disk": "disk"}  # figure name -> rerank.extractor
LIGHTGLUE_DIM = 128  # ALIKED-n16's and DISK's descriptor size: one random LightGlue serves both
# the tiny run's backbone for `kit train` (the full run trains the carried lite0 weights)
TINY_BACKBONE = ("embed.model=test_efficientnet", "embed.weights=null", "embed.allow_random_weights=true")


# ------------------------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def cores(n: int):
    """Run the block on ``n`` of this process's CPUs (every thread of it, and the processes and threads it starts
    inside): a Kaggle notebook's 4 cores on a bigger machine. Yields the number of CPUs really used."""
    have = sorted(os.sched_getaffinity(0))
    use = set(have[:n])
    threads = torch.get_num_threads()
    tids = [int(t) for t in os.listdir("/proc/self/task")] if Path("/proc/self/task").is_dir() else [0]
    pinned = []
    for tid in tids:
        try:
            os.sched_setaffinity(tid, use)
            pinned.append(tid)
        except OSError:  # a thread that just ended, or a sandbox that refuses: the rest stays pinned
            pass
    torch.set_num_threads(len(use))
    try:
        yield len(use)
    finally:
        for tid in pinned + [0]:
            try:
                os.sched_setaffinity(tid, set(have))
            except OSError:
                pass
        torch.set_num_threads(threads)


def _mosaic(job: tuple[list[str], str, int]) -> None:
    """One pool photo: four source photos tiled 2 x 2 into a side x 3/4 side JPEG (quality 90)."""
    from PIL import Image

    from kit.data import open_image

    srcs, dst, side = job
    w, h = side, side * 3 // 4
    canvas = Image.new("RGB", (w, h))
    for t, src in enumerate(srcs):
        canvas.paste(open_image(src).resize((w // 2, h // 2), Image.BICUBIC), ((t % 2) * (w // 2), (t // 2) * (h // 2)))
    canvas.save(dst, "JPEG", quality=90)


def photo_pool(sources: list[str], n: int, side: int, folder: Path, workers: int) -> list[str]:
    """``n`` distinct photos (distinct files, distinct cache keys) tiled from ``sources``."""
    folder.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(0).permutation(len(sources))
    jobs = [([sources[order[(4 * i + t) % len(sources)]] for t in range(4)], str(folder / f"{i:05d}.jpg"), side)
            for i in range(n)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_mosaic, jobs, chunksize=16))
    else:
        for job in jobs:
            _mosaic(job)
    return [j[1] for j in jobs]


def shape_pairs(queries: int, topk: int, gallery: int, seed: int = 0) -> np.ndarray:
    """``[queries * topk, 2] int64``: each query's ``topk`` distinct gallery photos, drawn at random."""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.stack([np.full(topk, q), rng.choice(gallery, topk, replace=False)], 1)
                           for q in range(queries)]).astype(np.int64)


# ------------------------------------------------------------------------------------------------------------------
# Embedding
# ------------------------------------------------------------------------------------------------------------------

def model_rate(desc: embed.Descriptor, conf: dict, pol, n: int) -> float:
    """img/s of the network alone: random ``[batch, 3, S, S]`` tensors already on the device, as kit.embed runs it."""
    dev, bs, size = pol.device, int(conf["batch_size"]), desc.preprocess.size
    cl = dev.type == "cuda" and conf.get("channels_last", True)
    net = desc.net.to(dev)
    x = torch.randn(bs, 3, size, size, device=dev)
    if cl:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    steps = max(1, n // bs)
    with torch.inference_mode(), pol.autocast():
        for _ in range(3 if dev.type == "cuda" else 1):  # warm-up: cuDNN's algorithm search, first allocations
            net(x)
        sync(dev)
        t = time.perf_counter()
        for _ in range(steps):
            net(x).float()
        sync(dev)
    return steps * bs / (time.perf_counter() - t)


def loader_rate(desc: embed.Descriptor, paths: list[str], conf: dict, workers: int, device: torch.device) -> float:
    """img/s of the kit's loader alone (its dataset, worker set-up and batching; no model), tensors moved to
    ``device``."""
    bs = int(conf["batch_size"])
    loader = torch.utils.data.DataLoader(embed.ImageDataset(paths, desc.preprocess), batch_size=bs, shuffle=False,
                                         num_workers=min(workers, len(paths) // bs), pin_memory=device.type == "cuda",
                                         worker_init_fn=embed._one_thread)
    t = time.perf_counter()
    for x, _ in loader:
        x.to(device, non_blocking=True)
    sync(device)
    return len(paths) / (time.perf_counter() - t)


def decode_batch(data: list[torch.Tensor], pre: embed.Preprocess, device: torch.device) -> torch.Tensor:
    """JPEG bytes -> ``[B, 3, S, S] float32`` on ``device``, as kit.embed.Preprocess makes them: decoded there
    (torchvision.io.decode_jpeg), squashed to S x S (antialiased, PIL's filters), scaled and normalised."""
    import torchvision.io as tio

    if pre.crop_pct is not None:
        raise ValueError("the GPU decode path squashes photos; it has no centre crop (embed.crop_pct must be null)")
    images = tio.decode_jpeg(data, mode=tio.ImageReadMode.RGB, device=device)
    mode = "bicubic" if pre.interpolation == "bicubic" else "bilinear"
    x = torch.stack([F.interpolate(im[None].float(), size=(pre.size, pre.size), mode=mode, antialias=True,
                                   align_corners=False)[0] for im in images])
    mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1)
    return (x.clamp_(0, 255) / 255 - mean) / std


def gpu_decode_rate(desc: embed.Descriptor, paths: list[str], conf: dict, pol, threads: int
                    ) -> tuple[float, np.ndarray]:
    """img/s embedding ``paths`` with JPEG decoding on the device (file reads on ``threads`` threads, one batch per
    task, all queued at once), and the ``[N, D] float32`` L2-normalised embeddings."""
    import torchvision.io as tio

    dev, bs, pre = pol.device, int(conf["batch_size"]), desc.preprocess
    cl = dev.type == "cuda" and conf.get("channels_last", True)
    net = desc.net.to(dev)
    if cl:
        net = net.to(memory_format=torch.channels_last)
    out = np.empty((len(paths), desc.dim), np.float32)

    def read(batch: list[str]) -> list[torch.Tensor]:
        return [tio.read_file(p) for p in batch]

    with torch.inference_mode():
        decode_batch(read(paths[:2]), pre, dev)  # warm-up: the decoder's handles, first allocations
        sync(dev)
        t = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(read, paths[s:s + bs]) for s in range(0, len(paths), bs)]
            for b, fut in enumerate(futures):
                x = decode_batch(fut.result(), pre, dev)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                with pol.autocast():
                    feats = net(x)
                out[b * bs:b * bs + len(x)] = F.normalize(feats.float(), dim=1).cpu().numpy()
        sync(dev)
    return len(paths) / (time.perf_counter() - t), out


def input_error(desc: embed.Descriptor, paths: list[str], device: torch.device) -> float:
    """Mean relative L2 distance between the GPU path's input tensors and kit.embed.Preprocess's on the fully
    decoded photo, per photo. (The kit's loader also decodes large JPEGs in draft mode, at a reduced DCT scale:
    that alone moves B3's inputs by about 4% on 1024 x 768 photos, measured on CPU.)"""
    import torchvision.io as tio

    from kit.data import open_image

    pre, errs = desc.preprocess, []
    for p in paths:
        want = pre(open_image(p))
        got = decode_batch([tio.read_file(p)], pre, device)[0].cpu()
        errs.append(float((got - want).norm() / want.norm()))
    return float(np.mean(errs))


def bench_embed(rep: Report, sizes: Sizes, pool: list[str], tmp: Path, embed_batch: int | None) -> None:
    paths = pool[:sizes.embed_images]
    n = len(paths)
    for slot, config in MODELS.items():
        conf = load_config(ROOT / config)["embed"]
        conf.update(weights=None, allow_random_weights=True, **sizes.models.get(slot, {}))
        if embed_batch:
            conf["batch_size"] = embed_batch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "RANDOM weights": asked for, speed does not depend on them
            desc = embed.load_descriptor(conf)
        pol = device_policy(conf["device"], conf["amp"], conf["num_workers"])
        bs = int(conf["batch_size"])
        rep.doc["shapes"][f"embed.{slot}"] = {
            "model": desc.name, "weights": "random", "image_size": desc.preprocess.size, "batch_size": bs,
            "precision": pol.precision, "images": n, "loader_workers": min(pol.workers, n // bs),
            "photos": f"{sizes.photo_side} x {sizes.photo_side * 3 // 4} JPEG mosaics"}
        print(f"[embed] {slot}: {desc.name} at {desc.preprocess.size} px, batch {bs}, {pol.precision}, {n} photos",
              flush=True)
        rep.add(f"embed.{slot}.model_img_s", model_rate(desc, conf, pol, n))

        cache_dir = tmp / f"cache-embed-{slot}"
        t = time.perf_counter()
        cold = embed.embed_paths(paths, conf, cache_dir, desc)
        cold_s = time.perf_counter() - t
        t = time.perf_counter()
        warm = embed.embed_paths(paths, conf, cache_dir, desc)
        warm_s = time.perf_counter() - t
        assert np.array_equal(cold, warm), "the warm cache returned other embeddings than the cold run"
        rep.add(f"embed.{slot}.cold_img_s", n / cold_s)
        rep.add(f"embed.{slot}.warm_img_s", n / warm_s)
        rep.add(f"embed.{slot}.warm_over_cold", cold_s / warm_s)

        with cores(sizes.kaggle_cores) as k:
            rep.doc["shapes"]["kaggle_cpus_used"] = k
            t = time.perf_counter()
            embed.extract(desc, paths, {**conf, "num_workers": k})
            loader4 = n / (time.perf_counter() - t)
            gpu4, _ = gpu_decode_rate(desc, paths, conf, pol, k)
        rep.add(f"embed.{slot}.kaggle4_loader_img_s", loader4)
        rep.add(f"embed.{slot}.kaggle4_gpu_decode_img_s", gpu4)
        rep.doc["choices"][f"embed.{slot}.on_4_cores"] = "gpu_decode" if gpu4 > loader4 else "kit_loader"

        if slot == "efficientnet_b3":
            alone = loader_rate(desc, paths, conf, pol.workers, pol.device)
            rep.add("embed.efficientnet_b3.decode_only_img_s", alone)
            rep.add("embed.efficientnet_b3.decode_bound", (n / cold_s) / alone)
            with cores(sizes.kaggle_cores) as k:
                rep.add("embed.kaggle4_decode_per_core_img_s", loader_rate(desc, paths, conf, k, pol.device) / k)
            rep.add("embed.gpu_decode_input_rel_err", input_error(desc, paths[:8], pol.device))
        desc.net.cpu()
        del desc
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------------------------
# Local matching
# ------------------------------------------------------------------------------------------------------------------

def extractor_weights(name: str, tmp: Path) -> tuple[str, str]:
    """The extractor checkpoint: carried in bench/gpu-inputs/weights, else where the kit finds it, else random."""
    ref = EXTRACTORS[name].weights
    carried = INPUTS / "weights" / ref.names[0]
    if carried.is_file():
        return str(carried), "real (bench/gpu-inputs)"
    try:
        return str(resolve_weights(ref)), "real (kit.rerank.resolve_weights)"
    except WeightsError:
        import kornia.feature as KF

        torch.manual_seed(0)
        net = KF.ALIKED(name) if EXTRACTORS[name].family == "aliked" else KF.DISK()
        path = tmp / f"random-{ref.names[0]}"
        torch.save(net.state_dict(), path)
        return str(path), "random (no checkpoint found)"


def random_lightglue(tmp: Path) -> str:
    """A LightGlue checkpoint of random weights for 128-d descriptors (see the module docstring)."""
    import kornia.feature as KF

    path = tmp / "random-lightglue-128.pth"
    if not path.is_file():
        torch.manual_seed(0)
        torch.save(KF.LightGlue(None, input_dim=LIGHTGLUE_DIM).state_dict(), path)
    return str(path)


def build_scorer(rep: Report, figure: str, sizes: Sizes, tmp: Path):
    name = MATCHERS[figure]
    base = {"max_keypoints": sizes.keypoints, "resize": sizes.resize}
    if name == "sift":
        rep.doc["weights"]["sift"] = "none (OpenCV RootSIFT)"
        scorer = make_scorer("sift", rerank_conf({**base, "extractor": "sift"}))  # on rerank.device: the GPU here
        scorer.chunk = 256 if scorer.policy.device.type == "cuda" else scorer.chunk  # [256, 512, 512] fp32: 256 MB
        return scorer
    path, how = extractor_weights(name, tmp)
    rep.doc["weights"][name] = {"extractor": how, "lightglue": "random (128-d, non-adaptive)"}
    return make_scorer(name, rerank_conf({**base, "extractor": name, "extractor_weights": path,
                                          "matcher_weights": random_lightglue(tmp)}))


@contextmanager
def cache_reads():
    """Count and time kit.cache.load_shards inside the block (score_pairs reads the whole feature cache once per
    extract call, two per 4,096-pair chunk): yields a dict that holds ``reads`` and ``seconds`` afterwards."""
    import kit.cache
    import kit.rerank.pairs

    original, seen = kit.cache.load_shards, {"reads": 0, "seconds": 0.0}

    def timed(folder):
        t = time.perf_counter()
        try:
            return original(folder)
        finally:
            seen["reads"] += 1
            seen["seconds"] += time.perf_counter() - t

    kit.cache.load_shards = kit.rerank.pairs.load_shards = timed
    try:
        yield seen
    finally:
        kit.cache.load_shards = kit.rerank.pairs.load_shards = original


def run_local(scorer, pool: list[str], shape: tuple[int, int, int], tmp: Path, tag: str) -> dict:
    """Extraction (cold, into a fresh cache) then kit.rerank.score_pairs on ``shape``'s pairs; seconds of each."""
    q, k, g = shape
    qpaths, gpaths = pool[:q], pool[q:q + g]
    assert len(gpaths) == g, f"the photo pool holds {len(pool)} photos; {q + g} needed"
    pairs = shape_pairs(q, k, g)
    if scorer.device_name.startswith("cuda"):  # load the network, run the first kernels, untimed (on a CPU it
        warm = scorer.extract(gpaths[:2], tmp / f"cache-warmup-{tag}")  # costs as much as the tiny run itself)
        scorer.score(warm, warm, np.array([[0, 1]]))
    cache = tmp / f"cache-{tag}"
    used_q, used_g = np.unique(pairs[:, 0]), np.unique(pairs[:, 1])
    t = time.perf_counter()
    scorer.extract([qpaths[i] for i in used_q], cache)
    scorer.extract([gpaths[j] for j in used_g], cache)
    extract_s = time.perf_counter() - t
    t = time.perf_counter()
    with cache_reads() as reads:
        scores = score_pairs(scorer, qpaths, gpaths, pairs, cache)
    pairs_s = time.perf_counter() - t
    bad = [c for c, v in scores.items() if len(v) != len(pairs) or not np.isfinite(v).all()]
    assert not bad, f"{scorer.name}: columns {bad} are short or not finite"
    return {"photos": int(len(used_q) + len(used_g)), "pairs": int(len(pairs)), "extract_s": extract_s,
            "pairs_s": pairs_s, "cache_reads": reads["reads"], "cache_read_s": reads["seconds"], "qpaths": qpaths,
            "gpaths": gpaths, "pair_index": pairs, "cache": cache,
            "matches_per_pair": float(scores["n_matches"].mean())}


def sift_agreement(scorer: SiftScorer, run: dict, limit: int = 256) -> float:
    """Share of (up to ``limit``) pairs whose scores on the scorer's device equal a CPU SiftScorer's, same features."""
    pairs = run["pair_index"][:limit]
    fa = scorer.extract(run["qpaths"], run["cache"])
    fb = scorer.extract(run["gpaths"], run["cache"])
    cpu = SiftScorer({**scorer.rc, "device": "cpu"}).score(fa, fb, pairs)
    gpu = scorer.score(fa, fb, pairs)
    same = np.ones(len(pairs), bool)
    for c in cpu:
        if not c.startswith("mask"):
            same &= np.isclose(cpu[c], gpu[c], rtol=1e-3, atol=1e-3)
    return float(same.mean())


def bench_local(rep: Report, sizes: Sizes, pool: list[str], tmp: Path) -> None:
    for figure in MATCHERS:
        scorer = build_scorer(rep, figure, sizes, tmp)
        print(f"[local] {figure} on {scorer.device_name}", flush=True)
        run = run_local(scorer, pool, sizes.local, tmp, f"local-{figure}")
        rep.doc["shapes"][f"local.{figure}"] = {
            "queries": sizes.local[0], "topk": sizes.local[1], "gallery": sizes.local[2], "pairs": run["pairs"],
            "photos": run["photos"], "keypoints": sizes.keypoints, "resize": sizes.resize,
            "device": scorer.device_name, "extract_s": run["extract_s"], "score_pairs_s": run["pairs_s"],
            "cache_reads": run["cache_reads"], "cache_read_s": run["cache_read_s"],
            "mean_matches": run["matches_per_pair"]}
        rep.add(f"local.{figure}.extract_img_s", run["photos"] / run["extract_s"])
        rep.add(f"local.{figure}.score_pairs_s", run["pairs"] / run["pairs_s"])
        rep.add(f"local.{figure}.e2e_pairs_s", run["pairs"] / (run["extract_s"] + run["pairs_s"]))
        if figure == "sift":
            rep.add("local.sift.gpu_agreement", sift_agreement(scorer, run))
        del scorer


def bench_rerank(rep: Report, sizes: Sizes, pool: list[str], tmp: Path) -> None:
    scorer = build_scorer(rep, "aliked_n16", sizes, tmp)
    q, k, g = sizes.rerank
    print(f"[rerank] aliked-n16: {q} queries x top-{k} of {g} on {scorer.device_name}", flush=True)
    run = run_local(scorer, pool, sizes.rerank, tmp, "rerank")
    total = run["extract_s"] + run["pairs_s"]
    rep.doc["shapes"]["rerank.aliked_n16"] = {
        "queries": q, "topk": k, "gallery": g, "pairs": run["pairs"], "photos": run["photos"],
        "keypoints": sizes.keypoints, "resize": sizes.resize, "device": scorer.device_name,
        "extract_s": run["extract_s"], "score_pairs_s": run["pairs_s"], "cache_reads": run["cache_reads"],
        "cache_read_s": run["cache_read_s"],
        "note": "AnimalCLEF25's database has 13,074 photos: a real re-rank extracts more of them than this gallery"}
    rep.add("rerank.aliked_n16.top100_s", total)
    rep.add("rerank.aliked_n16.top100_pairs_s", run["pairs"] / total)


# ------------------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------------------

def bench_train(rep: Report, sizes: Sizes, data: Path, tmp: Path, carried: bool) -> None:
    """``kit train`` over configs/train-lite0.yaml: from the carried lite0 weights (``carried``), else from a tiny
    random backbone."""
    import pandas as pd

    lite0 = INPUTS / "weights" / "tf_efficientnet_lite0.safetensors"
    sets = [f"embed.weights={lite0}"] if carried else list(TINY_BACKBONE)
    sets += [*sizes.train, "train.plot=false"]
    out = tmp / "train"
    # the `kit train` command itself, in this process (a second interpreter would only add its start-up)
    argv = ["train", str(data), "--config", str(ROOT / "configs" / "train-lite0.yaml"),
            *[a for s in sets for a in ("--set", s)], "--out", str(out)]
    shown = "kit " + " ".join(argv).replace(str(ROOT) + "/", "")
    rep.doc["shapes"]["train"] = {"data": str(data), "command": shown}
    print(f"[train] {shown}", flush=True)
    t = time.perf_counter()
    rc = kit_main(argv)
    wall = time.perf_counter() - t
    if rc:
        raise RuntimeError(f"{shown} exited {rc}")
    hist = pd.read_csv(out / "history.csv")
    info = json.loads((out / "config.json").read_text())["kit_train"]
    before, epochs, after = hist[hist["epoch"] == 0].iloc[0], hist[hist["epoch"] > 0], info["metrics"]
    rep.doc["shapes"]["train"].update(epochs=int(len(epochs)), train_images=info["train_images"],
                                      classes=info["classes"], best_epoch=info["epoch"])
    rep.add("train.epoch_s", epochs["seconds"].mean())
    rep.add("train.train_img_s", info["train_images"] * len(epochs) / epochs["seconds"].sum())
    rep.add("train.wall_s", wall)
    for metric, name in (("R-1", "r1"), ("mAP", "map"), ("score", "score")):
        rep.add(f"train.{name}_before", before[metric])
        rep.add(f"train.{name}_after", after[metric])
    rep.add("train.r1_ratio", after["R-1"] / before["R-1"] if before["R-1"] > 0 else math.nan)
