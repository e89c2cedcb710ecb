"""The kit's GPU speed goals, measured in one run that writes one JSON (issue 15): the run, its figures and checks.

    bench/gpu.sh [--tiny] [--out FILE] [--stages embed,local,train,rerank]

The stages, in the order they run. Each one's figures are written to the JSON as soon as it ends, so a run cut
short keeps what it measured; a stage that fails is recorded under ``errors`` and the next one still runs.

- ``embed``: MegaDescriptor-L-384 (Swin-L, configs/megadescriptor-l-384.yaml) and EfficientNet-B3 at 320 px
  (configs/efficientnet-b3.yaml), both on random weights (speed does not depend on them), from JPEG files:
  model-bound (random tensors already on the device); through the kit's loader cold and warm (kit.embed.embed_paths
  with a fresh cache); on 4 cores as a Kaggle notebook has them (this process and its children pinned to 4 CPUs):
  the kit's loader with 4 decode workers, and GPU JPEG decoding (torchvision.io.decode_jpeg on the device, files read
  by 4 threads); for B3 also the loader without the model (is embedding decode-bound?), and how far the GPU path's
  input tensors are from the kit's.
- ``local``: RootSIFT (kit's SiftScorer: extraction on the CPU, its mutual-NN matcher on rerank.device, the GPU here), ALIKED-n16 and
  DISK with LightGlue, at 512 keypoints on 512 px photos: extraction, pair scoring through kit.rerank.score_pairs
  (the cached path a kit run takes), and the two end to end, on 128 queries x top-100 of 256.
- ``train``: ``kit train`` on nyala (configs/train-lite0.yaml: lite0 at 320 px, sub-centre ArcFace, 30 epochs):
  seconds per epoch, and held-out R-1, mAP and open-set score of the best epoch against epoch 0 (the pretrained
  backbone before training).
- ``rerank``: ALIKED + LightGlue on an AnimalCLEF25-sized top-100 re-rank: 2,135 queries x 100 = 213,500 pairs over
  2,135 query and 2,048 database photos (features extracted inside the timing, cold).

Photos: a pool of 2 x 2 mosaics of the carried nyala photos (1024 x 768 JPEGs, quality 90), written at the start.
LightGlue runs on random weights (its 47 MB checkpoints do not travel; the kit runs it non-adaptive, so its cost does
not depend on them); ALIKED and DISK on their real weights.

``--tiny`` runs every stage on the CPU at toy sizes (synthetic photos from kit.synth, tiny timm models, a few pairs,
one training epoch), then checks its JSON as a full run does: every figure present and finite, or exit 1. CI runs it
(tests/test_gpu_bench.py), so the GPU run cannot rot. bench/gpu_stages.py holds the stages, this file the run, the
figures and the JSON check. The full run needs a CUDA GPU and bench/gpu-inputs/ (written
by ``bench/gpu.sh --prepare``, bench/gpu_inputs.py). Goals are judged (``passed``) only in a full run on a GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch  # noqa: E402
import tqdm.std  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # the kit of this checkout; gpu_stages beside this file

from gpu_stages import (INPUTS, MATCHERS, bench_embed, bench_local, bench_rerank, bench_train,  # noqa: E402
                        photo_pool)
from kit.device import policy as device_policy  # noqa: E402
from kit.io import write_json  # noqa: E402

STAGES = ("embed", "local", "train", "rerank")  # the order they run in: the longest last
_tqdm_init = tqdm.std.tqdm.__init__


def _no_bar(self, *args, **kwargs) -> None:
    """Progress bars would bury the figures in a device run's log (the kit sets ``disable`` itself, so TQDM_DISABLE
    does not reach them); tqdm.write, which kit train logs its epochs with, still prints."""
    _tqdm_init(self, *args, **{**kwargs, "disable": True})


tqdm.std.tqdm.__init__ = _no_bar


@dataclass(frozen=True)
class Sizes:
    """How much each stage measures. FULL is the GPU run (meant to take 4-5 min on an H100/H200; not yet timed on
    one), TINY the CPU check CI runs (well under a minute)."""

    photo_side: int  # long side of the pool's JPEGs (2 x 2 mosaics, 4:3)
    embed_images: int  # photos per embedding measurement
    keypoints: int  # rerank.max_keypoints
    resize: int  # rerank.resize: long side of the photos local features are extracted from
    local: tuple[int, int, int]  # queries, shortlist, gallery photos of the local-matching shape
    rerank: tuple[int, int, int]  # the same for the re-rank: AnimalCLEF25 has 2,135 test queries
    train: tuple[str, ...]  # --set overrides of `kit train` over configs/train-lite0.yaml (and its weights)
    models: dict = field(default_factory=dict)  # per embedding slot: overrides of its config (tiny timm models)
    kaggle_cores: int = 4  # CPU cores of a Kaggle GPU notebook


FULL = Sizes(photo_side=1024, embed_images=2048, keypoints=512, resize=512, local=(128, 100, 256),
             rerank=(2135, 100, 2048), train=())
TINY = Sizes(photo_side=96, embed_images=24, keypoints=32, resize=64, local=(2, 4, 4), rerank=(2, 3, 4),
             train=("embed.batch_size=16", "train.image_size=32", "train.epochs=1", "train.batch_size=8",
                    "train.per_identity=2", "train.val_identities=0.5", "train.warmup_epochs=0"),
             models={"megadescriptor_l384": {"model": "test_convnext", "image_size": 64, "batch_size": 8},
                     "efficientnet_b3": {"model": "test_efficientnet", "image_size": 64, "batch_size": 8}})


# ------------------------------------------------------------------------------------------------------------------
# The figures: a fixed set of keys, each {value, unit, goal, passed, note}
# ------------------------------------------------------------------------------------------------------------------

def _embed_figures(slot: str, name: str, model_goal: tuple | None, model_anchor: str) -> dict:
    return {
        f"embed.{slot}.model_img_s": ("img/s", model_goal, f"{name}, random tensors on the device, no decoding; "
                                                           f"{model_anchor}"),
        f"embed.{slot}.cold_img_s": ("img/s", model_goal, f"{name} from JPEG files through the kit's loader (auto "
                                                          "workers), cold cache"),
        f"embed.{slot}.warm_img_s": ("img/s", None, f"{name}, the same photos again from the cache"),
        f"embed.{slot}.warm_over_cold": ("x", (">=", 50), "cold seconds / warm seconds"),
        f"embed.{slot}.kaggle4_loader_img_s": ("img/s", None, f"{name}, the kit's loader with 4 decode workers, "
                                                              "pinned to 4 CPUs (a Kaggle notebook)"),
        f"embed.{slot}.kaggle4_gpu_decode_img_s": ("img/s", None, f"{name}, JPEG decoding on the device "
                                                                  "(torchvision decode_jpeg), 4 reader threads, "
                                                                  "pinned to 4 CPUs"),
    }


FIGURES: dict[str, tuple[str, tuple[str, float] | None, str]] = {  # key -> (unit, goal (op, threshold), note)
    **_embed_figures("megadescriptor_l384", "MegaDescriptor-L-384 (Swin-L, 384 px)", (">=", 350),
                     "anchor 463 img/s on an H100 (bf16)"),
    **_embed_figures("efficientnet_b3", "EfficientNet-B3 (320 px)", None, "anchor 5,043 img/s on an H100 (bf16)"),
    "embed.efficientnet_b3.decode_only_img_s": ("img/s", None, "the kit's loader alone (decode + resize, auto "
                                                               "workers), no model"),
    "embed.efficientnet_b3.decode_bound": ("x", (">=", 0.9), "B3 cold img/s / loader-alone img/s: 1 = the model "
                                                             "keeps up with decoding"),
    "embed.kaggle4_decode_per_core_img_s": ("img/s", None, "the kit's loader alone with 4 workers on 4 CPUs, per "
                                                           "core; anchor about 76 img/s per core"),
    "embed.gpu_decode_input_rel_err": ("", ("<=", 0.02), "||GPU-decoded input - kit.embed.Preprocess's|| / "
                                                         "||kit's||, B3 at 320 px, full decode, 8 photos"),
    **{f"local.{m}.extract_img_s": ("img/s", None, f"{e} features at 512 keypoints, 512 px, cold")
       for m, e in MATCHERS.items()},
    **{f"local.{m}.score_pairs_s": ("pairs/s", None, f"{e} pair scores through kit.rerank.score_pairs, features "
                                                     "cached") for m, e in MATCHERS.items()},
    "local.sift.e2e_pairs_s": ("pairs/s", None, "RootSIFT end to end (extraction on the CPU, matching on the GPU)"),
    "local.aliked_n16.e2e_pairs_s": ("pairs/s", (">=", 1500), "ALIKED-n16 + LightGlue end to end; anchors: ALIKED "
                                                              "364 img/s, LightGlue 1,944 pairs/s batched (H100)"),
    "local.disk.e2e_pairs_s": ("pairs/s", (">=", 1500), "DISK + LightGlue end to end"),
    "local.sift.gpu_agreement": ("share", (">=", 0.99), "pairs whose GPU RootSIFT scores equal kit's CPU "
                                                        "SiftScorer's"),
    "rerank.aliked_n16.top100_s": ("s", ("<=", 180), "2,135 queries x top-100 (213,500 pairs), ALIKED-n16 + "
                                                     "LightGlue, extraction included"),
    "rerank.aliked_n16.top100_pairs_s": ("pairs/s", None, "the same, pairs per second"),
    "train.epoch_s": ("s", None, "kit train, seconds per epoch (training + held-out validation)"),
    "train.train_img_s": ("img/s", None, "training photos per second, over the epochs' time"),
    "train.wall_s": ("s", None, "the whole `kit train` command (start-up, preload, epoch 0 included)"),
    "train.r1_before": ("", None, "held-out R-1, epoch 0: the pretrained backbone (pooled features)"),
    "train.r1_after": ("", None, "held-out R-1, the kept (best mAP) epoch"),
    "train.r1_ratio": ("x", (">=", 1.5), "after / before (the fine-tuning issue's goal)"),
    "train.map_before": ("", None, "held-out mAP, epoch 0"),
    "train.map_after": ("", None, "held-out mAP, the kept epoch"),
    "train.score_before": ("", None, "held-out open-set score sqrt(BAKS*BAUS), epoch 0"),
    "train.score_after": ("", None, "held-out open-set score, the kept epoch"),
}


class Report:
    """The JSON being written: machine, shapes, figures, errors; saved after every stage."""

    def __init__(self, path: Path, mode: str, judged: bool, stages: list[str]):
        self.path, self.judged = path, judged
        self.doc: dict = {"bench": "bench/gpu.py (issue 15)", "mode": mode, "judged": judged, "stages": stages,
                          "machine": machine(), "stage_s": {}, "peak_gpu_gib": {}, "shapes": {}, "choices": {},
                          "weights": {}, "errors": {}, "figures": {}}

    def add(self, key: str, value: float) -> None:
        unit, goal, note = FIGURES[key]
        value = float(value)
        passed = None
        if goal is not None and self.judged and math.isfinite(value):
            passed = value >= goal[1] if goal[0] == ">=" else value <= goal[1]
        self.doc["figures"][key] = {"value": value, "unit": unit, "goal": None if goal is None else
                                    f"{goal[0]} {goal[1]:g}", "passed": passed, "note": note}
        print(f"  {key} = {value:.4g} {unit}", flush=True)

    def save(self) -> None:
        write_json(self.doc, self.path)


def check(doc: dict, stages: list[str]) -> list[str]:
    """What is wrong with a written JSON: missing figures of the stages run, non-finite values, bad fields."""
    problems = [f"stage {s} failed: {e.strip().splitlines()[-1]}" for s, e in doc.get("errors", {}).items()]
    figs = doc.get("figures", {})
    for key in FIGURES:
        if key.split(".")[0] not in stages:  # embed.*, local.*, train.*, rerank.*
            continue
        f = figs.get(key)
        if f is None:
            problems.append(f"{key}: missing")
        elif not isinstance(f.get("value"), (int, float)) or not math.isfinite(f["value"]):
            problems.append(f"{key}: value {f.get('value')!r} is not a finite number")
        elif not {"unit", "goal", "passed"} <= set(f) or f["passed"] not in (True, False, None):
            problems.append(f"{key}: needs unit, goal and passed (true, false or null)")
    for key in ("gpu", "capability", "torch", "kornia", "cpu_cores"):
        if key not in doc.get("machine", {}):
            problems.append(f"machine.{key}: missing")
    if doc.get("mode") == "full" and not doc.get("machine", {}).get("gpu"):
        problems.append("machine.gpu: a full run names its GPU")
    return problems


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine() -> dict:
    cuda = torch.cuda.is_available()
    props = torch.cuda.get_device_properties(0) if cuda else None
    return {
        "gpu": props.name if cuda else None,
        "capability": f"{props.major}.{props.minor}" if cuda else None,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1) if cuda else None,
        "precision": device_policy().precision,  # what embed.amp=auto picks here (kit.device)
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
        "torch": torch.__version__, "torchvision": _version("torchvision"), "timm": _version("timm"),
        "kornia": _version("kornia"), "opencv": _version("opencv-python-headless") or _version("opencv-python"),
        "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
        "load_average_1min": os.getloadavg()[0],  # other jobs on the machine depress every rate
    }


# ------------------------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------------------------

def inputs(carried: bool, tmp: Path) -> tuple[list[str], Path]:
    """The source photos the pool is tiled from, and the folder ``kit train`` trains on: the carried nyala photos
    (bench/gpu-inputs), else a small kit.synth competition."""
    if not carried:
        from kit.synth import make_competition

        comp = make_competition(tmp / "synth", seed=0, identities=8, images_per_identity=(3, 4), image_size=64)
        return sorted(str(p) for p in (comp / "images").rglob("*.jpg")), comp
    nyala = INPUTS / "nyala"
    photos = sorted(str(p) for p in nyala.glob("*/*.jpg"))
    if not photos:
        raise SystemExit(f"{nyala} holds no photos: run `bench/gpu.sh --prepare` on the machine with the data and "
                         "PyPI first, then carry bench/gpu-inputs (bench/README.md, GPU)")
    return photos, nyala


def table(doc: dict) -> str:
    """The figures as bench/README.md's GPU table: figure, value, unit, goal, passed, device."""
    m = doc["machine"]
    device = f"{m['gpu']} ({doc['mode']})" if m["gpu"] else f"CPU, {m['cpu_cores']} cores ({doc['mode']})"
    rows = ["| figure | value | unit | goal | passed | device |", "|---|---:|---|---|---|---|"]
    for key, f in doc["figures"].items():
        v = f["value"]
        shown = "n/a" if v is None else f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
        passed = "" if f["passed"] is None else "yes" if f["passed"] else "**no**"
        rows.append(f"| `{key}` | {shown} | {f['unit']} | {f['goal'] or ''} | {passed} | {device} |")
    return "\n".join(rows)


def merge(docs: list[dict]) -> dict:
    """One JSON from a run and its reruns (``--stages``): each later run's stages replace the earlier ones'."""
    out = json.loads(json.dumps(docs[0]))
    for doc in docs[1:]:
        for stage in doc["stages"]:
            out["errors"].pop(stage, None)
            out["figures"] = {k: f for k, f in out["figures"].items() if k.split(".")[0] != stage}
        for part in ("figures", "errors", "stage_s", "peak_gpu_gib", "shapes", "choices", "weights"):
            out[part].update(doc[part])
        out["stages"] = [s for s in STAGES if s in out["stages"] or s in doc["stages"]]
        if doc["machine"]["gpu"] != out["machine"]["gpu"]:
            out.setdefault("notes", []).append(f"stages {doc['stages']} ran on {doc['machine']['gpu']}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="every stage at toy sizes on the CPU (what CI runs)")
    ap.add_argument("--out", help="the JSON (default bench/gpu.json, with --tiny bench/gpu-tiny.json)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--carried", action="store_true",
                    help="with --tiny: the carried inputs (bench/gpu-inputs: nyala, weights) instead of synthetic "
                         "ones, to check them on a CPU before spending device time")
    ap.add_argument("--embed-batch", type=int, help="embedding batch size for both models (default: their configs')")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (photos, caches, checkpoint)")
    ap.add_argument("--table", nargs="+", metavar="JSON",
                    help="print the markdown table of written JSONs, check it and exit (several: a rerun's figures "
                         "replace the first run's; with --out, the merged JSON is written there)")
    args = ap.parse_args(argv)
    if args.table:
        doc = merge([json.loads(Path(p).read_text()) for p in args.table])
        if args.out:
            write_json(doc, args.out)
        print(table(doc))
        problems = check(doc, doc["stages"])
        for p in problems:
            print(f"problem: {p}", file=sys.stderr)
        return 1 if problems else 0
    stages = [s for s in args.stages.split(",") if s]
    if unknown := [s for s in stages if s not in STAGES]:
        ap.error(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    if not args.tiny and not torch.cuda.is_available():
        ap.error("the full run measures a GPU and torch sees none here; --tiny runs the CPU check")
    sizes = TINY if args.tiny else FULL
    out = Path(args.out or ROOT / "bench" / ("gpu-tiny.json" if args.tiny else "gpu.json")).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="kit-gpu-bench-"))
    os.environ["KIT_CACHE"] = str(tmp / "kit-cache")  # no run reads or fills the user's cache
    t0 = time.perf_counter()
    try:
        carried = args.carried or not args.tiny
        sources, train_data = inputs(carried, tmp)
        need = max(sizes.embed_images, sum(sizes.local[::2]), sum(sizes.rerank[::2]))
        workers = 1 if args.tiny else len(os.sched_getaffinity(0))
        pool = photo_pool(sources, need, sizes.photo_side, tmp / "pool", workers)
        mode = "full" if not args.tiny else "tiny, carried inputs" if carried else "tiny"
        rep = Report(out, mode, not args.tiny and torch.cuda.is_available(), stages)
        rep.doc["stage_s"]["photos"] = time.perf_counter() - t0
        rep.doc["shapes"]["pool"] = {"photos": len(pool), "side": sizes.photo_side, "sources": len(sources)}
        print(f"[photos] {len(pool)} photos of {sizes.photo_side} px in {rep.doc['stage_s']['photos']:.1f} s; "
              f"{rep.doc['machine']['gpu'] or 'CPU'}, torch {torch.__version__}", flush=True)
        rep.save()
        run = {"embed": lambda: bench_embed(rep, sizes, pool, tmp, args.embed_batch),
               "local": lambda: bench_local(rep, sizes, pool, tmp),
               "train": lambda: bench_train(rep, sizes, train_data, tmp, carried),
               "rerank": lambda: bench_rerank(rep, sizes, pool, tmp)}
        for stage in [s for s in STAGES if s in stages]:
            t = time.perf_counter()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            try:
                run[stage]()
            except Exception:  # one broken stage must not cost the others' figures in a one-shot GPU run
                rep.doc["errors"][stage] = traceback.format_exc()
                print(rep.doc["errors"][stage], file=sys.stderr, flush=True)
            gc.collect()  # the stage's networks and features go before the next stage measures
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            rep.doc["stage_s"][stage] = time.perf_counter() - t
            # what the stage's batch sizes need, whatever the card: the T4 profile reads its 16 GB against this
            rep.doc["peak_gpu_gib"][stage] = (round(torch.cuda.max_memory_allocated() / 2**30, 2)
                                              if torch.cuda.is_available() else None)
            rep.doc["stage_s"]["total"] = time.perf_counter() - t0
            rep.save()
            print(f"[{stage}] {rep.doc['stage_s'][stage]:.1f} s (total {rep.doc['stage_s']['total']:.1f} s)",
                  flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    doc = json.loads(out.read_text())  # judge what was written, not what is in memory
    problems = check(doc, stages)
    print(f"\n{doc['machine']['gpu'] or 'CPU'} ({doc['mode']} run, {doc['stage_s']['total']:.0f} s); wrote {out}\n")
    print(table(doc))
    if problems:
        print(f"\n{len(problems)} problem(s) in {out}:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
