"""bench/gpu.sh, the GPU speed benchmark (issue 15): its tiny CPU mode runs every stage the GPU run times, so the
one-shot device run cannot rot; its JSON check, its 4-core pinning and its README table are checked here too."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu():
    """bench/gpu.py as a module (bench/ is no package)."""
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stages(gpu):
    """bench/gpu_stages.py, which bench/gpu.py imports from beside itself."""
    return sys.modules["gpu_stages"]


def _doc(gpu, value=1.0) -> dict:
    figures = {k: {"value": value, "unit": u, "goal": None, "passed": None} for k, (u, _, _) in gpu.FIGURES.items()}
    machine = {k: None for k in ("gpu", "capability", "torch", "kornia", "cpu_cores")}
    parts = {k: {} for k in ("stage_s", "peak_gpu_gib", "shapes", "choices", "weights")}
    return {"figures": figures, "machine": machine, "errors": {}, "stages": list(gpu.STAGES), **parts}


def test_check_accepts_a_whole_json_and_names_each_problem(gpu):
    doc = _doc(gpu)
    assert gpu.check(doc, list(gpu.STAGES)) == []
    del doc["figures"]["rerank.aliked_n16.top100_s"]
    doc["figures"]["train.r1_after"]["value"] = None  # what a NaN becomes in strict JSON
    doc["figures"]["embed.efficientnet_b3.cold_img_s"]["passed"] = "yes"
    doc["errors"]["local"] = "Traceback ...\nRuntimeError: CUDA out of memory\n"
    problems = gpu.check(doc, list(gpu.STAGES))
    assert "rerank.aliked_n16.top100_s: missing" in problems
    assert any(p.startswith("train.r1_after: value None") for p in problems)
    assert any(p.startswith("embed.efficientnet_b3.cold_img_s: needs") for p in problems)
    assert "stage local failed: RuntimeError: CUDA out of memory" in problems
    # a run of some stages is judged on those stages' figures only
    assert gpu.check(doc, ["embed"]) == ["stage local failed: RuntimeError: CUDA out of memory",
                                         "embed.efficientnet_b3.cold_img_s: needs unit, goal and passed (true, "
                                         "false or null)"]


def test_a_reruns_stages_replace_the_first_runs(gpu):
    first, rerun = _doc(gpu, 1.0), _doc(gpu, 2.0)
    first["errors"] = {"rerank": "Traceback ...\nKeyboardInterrupt\n"}
    first["figures"] = {k: f for k, f in first["figures"].items() if not k.startswith("rerank.")}
    rerun["stages"] = ["rerank"]
    rerun["figures"] = {k: f for k, f in rerun["figures"].items() if k.startswith("rerank.")}
    merged = gpu.merge([first, rerun])
    assert gpu.check(merged, list(gpu.STAGES)) == [] and merged["stages"] == list(gpu.STAGES)
    assert merged["figures"]["rerank.aliked_n16.top100_s"]["value"] == 2.0
    assert merged["figures"]["train.epoch_s"]["value"] == 1.0


def test_goals_are_judged_only_in_a_judged_run(gpu, tmp_path):
    rep = gpu.Report(tmp_path / "g.json", "full", judged=True, stages=list(gpu.STAGES))
    rep.add("embed.megadescriptor_l384.cold_img_s", 351.0)
    rep.add("rerank.aliked_n16.top100_s", 181.0)
    rep.add("train.epoch_s", 3.0)  # no goal
    f = rep.doc["figures"]
    assert (f["embed.megadescriptor_l384.cold_img_s"]["passed"], f["rerank.aliked_n16.top100_s"]["passed"],
            f["train.epoch_s"]["passed"]) == (True, False, None)
    assert f["embed.megadescriptor_l384.cold_img_s"]["goal"] == ">= 350"
    tiny = gpu.Report(tmp_path / "t.json", "tiny", judged=False, stages=list(gpu.STAGES))
    tiny.add("embed.megadescriptor_l384.cold_img_s", 351.0)
    assert tiny.doc["figures"]["embed.megadescriptor_l384.cold_img_s"]["passed"] is None


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU pinning needs Linux")
def test_cores_pins_the_block_and_its_workers_then_restores(stages):
    import torch

    have, threads = os.sched_getaffinity(0), torch.get_num_threads()
    with stages.cores(1) as n:
        assert n == 1 and len(os.sched_getaffinity(0)) == 1 and torch.get_num_threads() == 1
        child = subprocess.run([sys.executable, "-c", "import os; print(len(os.sched_getaffinity(0)))"],
                               capture_output=True, text=True, check=True)
        assert child.stdout.strip() == "1"  # a decode worker started inside inherits the pinning
    assert os.sched_getaffinity(0) == have and torch.get_num_threads() == threads


def test_the_readme_table_has_a_row_per_figure(gpu):
    text = (ROOT / "bench" / "README.md").read_text()
    gpu_part = text[text.index("## GPU"):]
    missing = [k for k in gpu.FIGURES if f"`{k}`" not in gpu_part]
    assert not missing, f"bench/README.md's GPU table lacks {missing}"


def test_the_gpu_path_decodes_like_the_kits_preprocessing(stages, tmp_path):
    """decode_batch (JPEG decoding on the device; the CPU here) gives the inputs kit.embed.Preprocess gives."""
    import torch
    import torchvision.io as tio
    from PIL import Image

    from kit.embed import Preprocess

    rng = __import__("numpy").random.default_rng(0)
    path = tmp_path / "p.jpg"
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype="uint8")).resize((480, 360)).save(path, quality=95)
    pre = Preprocess(64, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bicubic")
    want = pre(Image.open(path).convert("RGB"))
    got = stages.decode_batch([tio.read_file(str(path))], pre, torch.device("cpu"))[0]
    assert got.shape == want.shape == (3, 64, 64)
    assert float((got - want).norm() / want.norm()) < 0.02


def test_rootsift_matching_stays_on_the_tensors_device():
    """kit's mnn_scores makes every tensor on its inputs' device, so RootSIFT matches on a GPU as it does on the
    CPU. The meta device stands in for CUDA (an op mixing it with a CPU tensor raises)."""
    import numpy as np
    import torch

    from kit.rerank.mnn import mnn_scores, prepare

    meta = torch.device("meta")
    count = np.array([16, 10, 3])
    gallery = prepare(np.random.rand(3, 16, 128).astype(np.float16), count).to(meta)
    query = prepare(np.random.rand(1, 12, 128).astype(np.float16), [12])[0].to(meta)
    res = mnn_scores(query, gallery, torch.from_numpy(count).to(meta), matches=True)
    assert {v.device for v in res.values()} == {meta}
    assert {tuple(v.shape) for k, v in res.items() if not k.startswith("match")} == {(3,)}


@pytest.mark.slow  # 34-73 s of CPU; 28-150 s of wall time on 2 shared cores, by their load
def test_tiny_run_writes_every_figure(gpu, tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--tiny", "--out", str(out)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert doc["mode"].startswith("tiny") and doc["errors"] == {}
    assert set(doc["figures"]) == set(gpu.FIGURES)
    for key, f in doc["figures"].items():
        unit, goal, _ = gpu.FIGURES[key]
        assert isinstance(f["value"], (int, float)) and math.isfinite(f["value"]), key
        assert f["unit"] == unit and f["passed"] is None  # a CPU run judges no GPU goal
        assert (f["goal"] is None) == (goal is None), key
    assert gpu.check(doc, list(gpu.STAGES)) == []
    assert set(doc["stage_s"]) >= set(gpu.STAGES)
    assert doc["figures"]["local.sift.gpu_agreement"]["value"] == 1.0  # same maths, same device here
    assert doc["shapes"]["rerank.aliked_n16"]["pairs"] == 2 * 3
    assert "kit train" in doc["shapes"]["train"]["command"]
    assert "| figure | value |" in res.stdout  # the table for bench/README.md comes last
