"""Outputs delivered at the end of a run (``--out``, ``--provenance``, ``--report``), even onto a disk that filled up.

kit/cli.py checks every output before any work, but a disk can fill up or go read-only during a run of hours. The
results are finished by then, so losing them to a traceback is the worst outcome: ``deliver`` writes them elsewhere
and says where.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

from .errors import OutputError
from .io import free_space

T = TypeVar("T")


def deliver(write: Callable[[Path], T], target: str | Path, option: str, conf: dict) -> T:
    """``write(target)``'s result, ``target`` being the file or folder of the command-line ``option``.

    When that write fails (OSError: a full disk, a read-only one), what it left is removed (folders it created; a
    file is atomic anyway), ``write`` goes to ``<cache root>/rescued/<time>-<name>``, else to the system's temporary
    folder, and an OutputError names ``target``, why, its free space and where the results are instead. Only when
    nothing can be written anywhere are they lost, and the error says that too. ``conf``: the run's config.
    """
    from .cache import cache_root  # numpy and safetensors: not at the CLI's start, which must stay instant

    def first_missing(p: Path) -> Path | None:  # the outermost folder (or the file) a write here would create
        new = None
        while not p.exists() and p != p.parent:
            new, p = p, p.parent
        return new

    def undo(new: Path | None) -> None:
        if new is not None and new.is_dir():
            shutil.rmtree(new, ignore_errors=True)

    target = Path(target).absolute()
    new = first_missing(target)
    try:
        return write(target)
    except OSError as exc:
        undo(new)
        why = f"{exc.strerror or exc}; {free_space(target)}"  # after undo: names a folder that is still there
    root = cache_root(conf["cache"])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for base in [*([root / "rescued"] if root else []), Path(tempfile.gettempdir()) / "kit-rescued"]:
        spot = base / f"{stamp}-{target.name}"
        new = first_missing(spot)
        try:
            write(spot)
        except OSError:
            undo(new)
            continue
        raise OutputError(f"{option} {target}: could not be written at the end ({why}). The finished results are in "
                          f"{spot} instead: copy them from there once there is room, or rerun with {option} on "
                          "another disk (what the cache holds is not computed again)")
    raise OutputError(f"{option} {target}: could not be written at the end ({why}), nor anywhere else (the cache "
                      "root, the temporary folder). Free some space, then rerun the same command (what the cache "
                      "holds is not computed again)")
