"""Files in and out: the one atomic writer, the string-safe CSV reader and strict JSON.

Every file the kit writes goes through ``atomic_path``: the bytes land in a temporary file beside the target
and are renamed onto it only when complete, so a crash or Ctrl-C mid-write leaves the old file (or none), never
a truncated one. The result gets the permissions an ordinary ``open()`` would give under the user's umask
(``mkstemp`` creates 0600, which would lock other users out of a shared cache or submission folder).

This module imports nothing else of the kit: every stage may use it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd


def safe_file_name(name: str, fallback: str, keep: str = "_.-") -> str:
    """``name`` as one file-name part: each run of characters other than ASCII letters, digits and ``keep`` becomes
    ``_``; ``fallback`` when nothing is left. (A submission name drops ``-``: it separates the name's fields.)"""
    return re.sub(f"[^A-Za-z0-9{re.escape(keep)}]+", "_", str(name)) or fallback


def umask() -> int:
    """The process's umask (read without changing it)."""
    mask = os.umask(0)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on failure deleted.

    The temporary name starts with a dot and ends in .tmp, so no glob of real files sees it. The final file's
    mode is 0666 minus the umask (644 under the usual 022), as for any file created with ``open()``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_problem(path: str | Path, folder: bool = False, keep_folders: bool = False) -> str | None:
    """Why ``path`` cannot be written (as a file, or as a folder when ``folder``), or None when it can.

    The check is real, not ``os.access`` (which says yes to root on a read-only disk): it creates the missing
    parent folders as a write would, then a temporary file in the target folder, and removes both again (the
    folders stay with ``keep_folders``). So it also catches a path through a file, a folder where a file should
    go, a full or read-only disk. Run it before the work whose result goes there.
    """
    path = Path(path).expanduser()
    if folder and path.exists() and not path.is_dir():
        return f"{path} exists and is a file, not a folder"
    if not folder and path.is_dir():
        return f"{path} is a folder; give a file name (e.g. {path / 'submission.csv'})"
    target = path if folder else path.parent
    missing, base = [], target
    while not base.exists():  # False also for a path that runs through a file (ENOTDIR)
        missing.append(base)
        base = base.parent
    if not base.is_dir():
        return f"{base} is a file, so nothing can be written under it"
    made: list[Path] = []
    where = base  # the folder written into at each step, for the message
    try:
        for d in reversed(missing):
            where = d.parent
            d.mkdir()
            made.append(d)
        where = target
        fd, tmp = tempfile.mkstemp(dir=target, prefix=".kit-write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return f"cannot write in {where} ({exc.strerror or exc})"
    finally:
        for d in reversed(made if not keep_folders else []):
            try:
                d.rmdir()
            except OSError:
                pass
    return None


def free_space(path: str | Path) -> str:
    """How much room the filesystem holding ``path`` has left ("0.0 MB free in /mnt/out"), read at its nearest
    existing folder: what a message about a write that failed at the end (a full disk) says."""
    base = Path(path).expanduser().absolute()
    while not base.exists() and base != base.parent:
        base = base.parent
    try:
        free = shutil.disk_usage(base).free
    except OSError:
        return f"free space in {base} unknown"
    return f"{free / 1e6:.1f} MB free in {base}"


def write_text(text: str, path: str | Path) -> Path:
    """Write a text file atomically (``atomic_path``); returns ``path``."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(path)


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as a CSV without its index, atomically; returns ``path``."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        df.to_csv(fh, index=False)
    return Path(path)


def jsonable(value: Any) -> Any:
    """``value`` with NaN/inf as None, numpy scalars and arrays as Python numbers and lists, tuples as lists,
    keys as strings: what strict JSON can hold."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalar or array
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def dumps_json(value: Any) -> str:
    """Strict JSON text (``jsonable`` first: no bare NaN, which most JSON readers reject), indented, newline-ended."""
    return json.dumps(jsonable(value), indent=2, allow_nan=False) + "\n"


def write_json(value: Any, path: str | Path) -> Path:
    """Write ``value`` as strict JSON (``dumps_json``), atomically; returns ``path``."""
    return write_text(dumps_json(value), path)


def copy_file(src: str | Path, dst: str | Path) -> Path:
    """Copy ``src`` onto ``dst`` atomically (contents and modification time); returns ``dst``."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
        shutil.copystat(src, tmp)
    return Path(dst)


def read_csv_str(path: str | Path, **kw) -> pd.DataFrame:
    """Read a CSV with every column as str and nothing turned into NaN: identity "NA" or "0123" stays as is."""
    return pd.read_csv(path, dtype=str, keep_default_na=False, **kw)
