"""What the parts of kit.kaggle share: Kaggle's names and places, this checkout, and the two errors.

Imports nothing of the kit but kit.errors, so every other module of the package may import it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import KitError

COMPETITION = "animal-clef-2025"  # the Kaggle competition slug (kaggle.com/competitions/<slug>)
INPUT_ROOT = "/kaggle/input"  # where Kaggle mounts competition data and attached datasets
REPO_ROOT = Path(__file__).resolve().parents[2]  # a source checkout (pyproject.toml here), else site-packages


class KaggleError(KitError):
    """The kaggle CLI failed (credentials, rules not accepted, no network) or a Kaggle input is missing."""


class NotebookError(KitError):
    """A notebook run by run_notebook failed; the message holds the failing cell and what it printed."""


def kaggle_config_dir(env: dict | None = None) -> Path:
    """Where the kaggle CLI looks for ``kaggle.json``: ``$KAGGLE_CONFIG_DIR``, else ``~/.kaggle``."""
    env = os.environ if env is None else env
    return Path(env.get("KAGGLE_CONFIG_DIR") or Path(env.get("HOME", "~")) / ".kaggle").expanduser()
