"""notebooks/*.ipynb: committed clean (no outputs, a `parameters` cell, no logic), and executed end to end on the
tiny synthetic competition, headless, with parameters injected the way papermill does (kit.kaggle.run_notebook).

A notebook that fails here fails CI: `make test` runs this file.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

import kit
from kit.io import read_csv_str
from kit.kaggle import KIT_DISTRIBUTION, KIT_WHEEL, build_offline_dataset, notebook_parameters, run_notebook

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# small mode: 64 px images, decoding in the kernel's process, few held-out unknowns
FAST = ["embed.image_size=64", "embed.num_workers=0", "validate.n_unknown=4"]
# kit train in small mode: one epoch of two 8-photo steps at 64 px, no per-epoch validation, no plot
TINY_TRAIN = ["train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=8", "train.per_identity=2",
              "train.image_size=64", "train.embed_dim=32", "train.num_workers=0", "train.val_identities=0",
              "train.validate_before=false", "train.warmup_epochs=0", "train.margin_warmup_epochs=0",
              "train.plot=false"]
BUDGET_S = 90  # wall seconds one notebook may take on a loaded 2-core CI machine (the first one imports torch)
PARAMETERS = {"DATA", "INPUT_ROOT", "OUTPUT_DIR", "CONFIG", "SETTINGS", "WEIGHTS", "KIT_PIP"}


def _read(path: Path):
    return nbformat.read(str(path), as_version=4)


def test_the_three_notebooks_are_there():
    assert {p.name for p in NOTEBOOKS} >= {"animalclef25-submit.ipynb", "validate.ipynb", "train.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    book = _read(path)
    nbformat.validate(book)
    for i, cell in enumerate(book.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: clear them before committing"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    assert "widgets" not in book.metadata, f"{path.name} carries widget state"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameterised_and_free_of_logic(path):
    book = _read(path)
    idx, names = notebook_parameters(book)
    assert names >= PARAMETERS, f"{path.name}: parameters cell lacks {sorted(PARAMETERS - names)}"
    assert idx == 1, "the parameters cell comes right after the title"
    for i, cell in enumerate(book.cells):
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        defs = [type(n).__name__ for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.For,
                                                                             ast.While, ast.Lambda))]
        assert not defs, f"{path.name} cell {i} holds logic ({defs}); move it into the kit and call it"
        assert len(cell.source.splitlines()) <= 16, f"{path.name} cell {i} is long: put the work in kit"


def test_run_notebook_injects_parameters_and_names_the_failing_cell(tmp_path):
    from kit.kaggle import KaggleError, NotebookError

    book = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("X = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print('X is', X)\nassert X == 2"),
    ])
    path = tmp_path / "t.ipynb"
    nbformat.write(book, str(path))
    with pytest.raises(KaggleError, match="no parameter"):
        run_notebook(path, {"Y": 2})
    with pytest.raises(NotebookError) as err:
        run_notebook(path, {"X": 3}, timeout=60)
    assert "X is 3" in str(err.value) and "assert X == 2" in str(err.value)


# ------------------------------------------------------------------------------------------ the install cell
# It runs before the kit is importable, so it is the one cell that holds plain Python instead of a kit call: these
# tests run it as on a fresh Kaggle kernel, in a subprocess where `import kit` finds nothing, with pip recorded.

INSTALL_HARNESS = """
import json, subprocess, sys
sys.modules["kit"] = None  # a fresh Kaggle kernel: importlib.util.find_spec("kit") is None
ran = []
subprocess.run = lambda cmd, **kw: ran.append(cmd)  # record the pip command instead of running it
exec(sys.stdin.read(), json.loads(sys.argv[1]))
print(json.dumps(ran))
"""


def _install_cell(path: Path) -> str:
    cells = [c for c in _read(path).cells if "install" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{path.name}: exactly one cell is tagged `install`"
    return cells[0].source


def _run_install_cell(input_root: Path, kit_pip: str = "") -> tuple[subprocess.CompletedProcess, list | None]:
    """The install cell with these parameters, kit not importable; returns the process and the commands it ran."""
    params = json.dumps({"INPUT_ROOT": str(input_root), "KIT_PIP": kit_pip})
    res = subprocess.run([sys.executable, "-c", INSTALL_HARNESS, params], input=_install_cell(NOTEBOOKS[0]),
                         capture_output=True, text=True, timeout=60)
    return res, (json.loads(res.stdout) if res.returncode == 0 else None)


def _pip_install(*source: str) -> list[str]:
    return [sys.executable, "-m", "pip", "install", "--quiet", *source]


@pytest.fixture(scope="module")
def kaggle_input(tmp_path_factory) -> Path:
    """A /kaggle/input look-alike: the competition, and the offline dataset `make kaggle-dataset` builds (without
    downloads: only the kit's own wheel matters here) attached under a name of the user's choosing."""
    root = tmp_path_factory.mktemp("kaggle-input")
    (root / "animal-clef-2025" / "images").mkdir(parents=True)
    (root / "animal-clef-2025" / "metadata.csv").write_text("image_id\n")
    build_offline_dataset(root / "my-kit-files", download=False)
    return root


def test_the_install_cell_is_the_same_everywhere_and_looks_for_the_builders_wheel():
    cells = {p.name: _install_cell(p) for p in NOTEBOOKS}
    assert len(set(cells.values())) == 1, f"the install cells differ: {sorted(cells)}; keep them identical"
    cell = cells[NOTEBOOKS[0].name]
    assert f"/wheels/{KIT_WHEEL}" in cell and f'"{KIT_DISTRIBUTION}"' in cell  # kit.kaggle.offline's names


def test_install_cell_finds_an_attached_offline_dataset(kaggle_input, tmp_path):
    wheels = kaggle_input / "my-kit-files" / "wheels"
    assert [w.name for w in wheels.glob(KIT_WHEEL)] == [f"animalclef_kit-{kit.__version__}-py3-none-any.whl"]
    res, ran = _run_install_cell(kaggle_input)
    assert res.returncode == 0, res.stderr
    source = ["--no-index", "--find-links", str(wheels), KIT_DISTRIBUTION]
    assert ran == [_pip_install(*source)]
    # two levels down (a dataset inside a folder) is found too
    deeper = tmp_path / "input"
    shutil.copytree(wheels, deeper / "owner" / "kit-v2" / "wheels")
    res, ran = _run_install_cell(deeper)
    assert ran == [_pip_install("--no-index", "--find-links", str(deeper / "owner" / "kit-v2" / "wheels"),
                                KIT_DISTRIBUTION)], res.stderr
    # and pip resolves that command from that folder alone (a dry run: nothing is installed; --ignore-installed
    # because the kit under test is already in this venv and pip would only say "already satisfied")
    dry = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
                          *source],
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"Would install {KIT_DISTRIBUTION}-{kit.__version__}" in dry.stdout


def test_install_cell_prefers_kit_pip(kaggle_input):
    fork = "git+https://github.com/someone/kit.git"
    res, ran = _run_install_cell(kaggle_input, kit_pip=fork)
    assert ran == [_pip_install(fork)], res.stderr


def test_install_cell_without_a_source_says_both_fixes(tmp_path):
    root = tmp_path / "input"
    (root / "old-kit" / "wheels").mkdir(parents=True)
    (root / "old-kit" / "wheels" / "kit-0.1.0-py3-none-any.whl").write_bytes(b"")  # the old distribution name
    res, ran = _run_install_cell(root)
    assert res.returncode == 1 and ran is None and res.stdout == "", "stops before pip"
    said = res.stderr
    assert f"no wheels/animalclef_kit-*.whl under {root}" in said
    assert "make kaggle-dataset" in said and "KIT_PIP" in said and "Internet on" in said
    assert "Traceback" not in said


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """One kernel for the notebooks of this module: torch is imported once, and the embedding cache is shared
    (the second notebook reuses the first's arrays). run_notebook resets its namespace before each notebook."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(tmp_path_factory.mktemp("kernel-cwd")),
                    env={**os.environ, "KIT_CACHE": str(tmp_path_factory.mktemp("notebook-cache")),
                         "TQDM_DISABLE": "1"})
    yield km
    km.shutdown_kernel(now=True)


def _execute(name: str, tmp_path: Path, data: Path, kernel, **extra):
    """Run notebooks/<name> on ``data`` with outputs in tmp_path/out; returns (output dir, all text it showed)."""
    out = tmp_path / "out"
    params = {"DATA": str(data), "INPUT_ROOT": str(tmp_path / "no-kaggle-input"), "OUTPUT_DIR": str(out),
              "SETTINGS": FAST, **extra}
    start = time.perf_counter()
    book = run_notebook(NOTEBOOK_DIR / name, params, cwd=tmp_path, timeout=BUDGET_S, km=kernel)
    elapsed = time.perf_counter() - start
    assert elapsed < BUDGET_S, f"{name} took {elapsed:.0f}s, over its {BUDGET_S}s budget"
    shown = []
    for cell in book.cells:
        for o in cell.get("outputs", []):
            shown.append(o.get("text", "") + "".join(str(v) for k, v in o.get("data", {}).items()
                                                     if k.startswith("text/")))
    return out, "\n".join(shown), book


@pytest.mark.slow
def test_submit_notebook_end_to_end(tiny_2025, tmp_path, kernel):
    out, shown, book = _execute("animalclef25-submit.ipynb", tmp_path, tiny_2025, kernel)
    sub = read_csv_str(out / "submission.csv")
    sample = read_csv_str(tiny_2025 / "sample_submission.csv")
    assert list(sub.columns) == ["image_id", "identity"]
    assert list(sub["image_id"]) == list(sample["image_id"])
    assert (sub["identity"].str.len() > 0).all()
    metrics = json.loads((out / "validation" / "metrics.json").read_text())
    assert set(metrics) == {"SynLynx", "SynSalamander", "SynTurtle"}
    assert all(ds in shown for ds in metrics), "the validation report is shown inline"
    assert f"wrote {len(sample)} predictions" in shown
    pngs = sorted((out / "validation").glob("*.png"))
    images = sum("image/png" in o.get("data", {}) for c in book.cells for o in c.get("outputs", []))
    assert images == len(pngs), "every PNG of the report is displayed"
    assert (out / "review" / "index.html").is_file(), "submit --review wrote the review site"
    shown_html = [o["data"]["text/html"] for c in book.cells for o in c.get("outputs", [])
                  if "most uncertain" in o.get("data", {}).get("text/html", "")]
    assert len(shown_html) == 1, "the most uncertain queries are shown inline"
    assert shown_html[0].count("<tr><td>") == 10 and "data:image/jpeg;base64," in shown_html[0]


@pytest.mark.slow
def test_validate_notebook_end_to_end(tiny_2025, tmp_path, kernel):
    out, shown, _ = _execute("validate.ipynb", tmp_path, tiny_2025, kernel)
    metrics = json.loads((out / "validation" / "metrics.json").read_text())
    assert set(metrics) == {"SynLynx", "SynSalamander", "SynTurtle"}
    for pipes in metrics.values():
        assert 0.0 <= pipes["global"]["score"] <= 1.0
    assert "SynTurtle" in shown


@pytest.mark.slow
def test_train_notebook_end_to_end(tiny_2025, tmp_path, kernel):
    out, shown, _ = _execute("train.ipynb", tmp_path, tiny_2025, kernel,
                             TRAIN_SETTINGS=TINY_TRAIN)
    assert (out / "checkpoint" / "model.safetensors").is_file()
    assert "best epoch" in shown
    metrics = json.loads((out / "validation" / "metrics.json").read_text())
    assert set(metrics) == {"SynLynx", "SynSalamander", "SynTurtle"}
