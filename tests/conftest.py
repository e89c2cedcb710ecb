"""Shared fixtures: tiny synthetic competitions (made once per session) and an isolated cache folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder, so no test sees another's cached arrays."""
    monkeypatch.setenv("KIT_CACHE", str(tmp_path / "kit-cache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def tiny_2025(tmp_path_factory) -> Path:
    from kit.synth import make_competition

    return make_competition(tmp_path_factory.mktemp("synth") / "c2025", layout="2025", seed=1, identities=6,
                            images_per_identity=(3, 4), image_size=64)


@pytest.fixture(scope="session")
def tiny_2026(tmp_path_factory) -> Path:
    from kit.synth import make_competition

    return make_competition(tmp_path_factory.mktemp("synth") / "c2026", layout="2026", seed=1, identities=5,
                            images_per_identity=(3, 4), image_size=64)


@pytest.fixture
def comp_copy(tiny_2025, tmp_path) -> Path:
    """A private, writable copy of the tiny 2025 competition (for tests that break it)."""
    dst = tmp_path / "comp"
    shutil.copytree(tiny_2025, dst)
    return dst
