"""Every bench/ script still imports against the kit it measures: a refactor that removes or renames what a
benchmark calls at import (``from kit.pipeline import match``) fails here, not months later on a GPU machine."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name != "gpu_stages.py")  # gpu.py imports gpu_stages


@pytest.mark.parametrize("name", SCRIPTS)
def test_bench_script_imports_and_has_a_main(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name[:-3]}", BENCH / name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)  # runs its imports; the work waits behind `if __name__ == "__main__"`
    finally:
        sys.modules.pop(spec.name, None)
    assert callable(getattr(module, "main", None)), f"bench/{name} has no main()"
