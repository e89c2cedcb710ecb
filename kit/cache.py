"""On-disk cache of per-image arrays (global embeddings, local features).

Layout: ``<root>/<stage>/<spec>/shard-*.safetensors``. ``spec`` is a hash of everything that changes the
arrays (model name, weights-file hash, preprocessing, TTA, ...); each entry inside is keyed by the image's
content identity (absolute path + size + mtime), so an edited or replaced photo is recomputed.

Why safetensors shards, not npy + a parquet index: a shard is one self-describing file (its keys ride in the
header metadata), its header states every tensor's byte length so truncation is detected on load, loading
never unpickles, and it needs no pyarrow. Each shard is written to a temporary file and renamed, so a shard
is either whole or absent: an interrupted run keeps every finished shard and resumes from there.

Each shard's header also holds a CRC-32 of its keys and values: a shard whose values were overwritten in place
(a bad disk, a stray write) still parses and still holds finite numbers, so only the checksum tells; such a shard is
deleted with a warning and its entries are recomputed. Shards from before the checksum are read as they are.

A shard that cannot be written (a disk that fills up during the run, one gone read-only) costs only its caching:
one warning per cache root and process, then the run goes on with the arrays in memory and writes no more shards
there. The cache is an optimisation; it must never be what stops a run.

Several processes may share one cache (two ``kit embed`` runs at once): shard names are unique, a shard that
vanishes between listing and reading (another process merged it) is skipped, and a merge writes its merged
shard before it deletes the shards it read, and only those. A key held twice holds the same arrays.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import uuid
import warnings
import zlib
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from safetensors.numpy import load_file, save_file

from .errors import KitWarning
from .io import atomic_path, free_space, write_problem

MAX_SHARDS = 64  # more shards than this are merged into one on the next load, keeping opens cheap
FLUSH_SECONDS = 30.0  # cached_compute saves a shard after about this much work (the embed stage's setting)
_UNUSABLE: dict[Path, str | None] = {}  # cache roots checked in this process: why each cannot be written, or None
_WRITES_FAILED: dict[Path, str] = {}  # cache roots a write failed in during this process (a full disk): why
_WRITES_LOCK = threading.Lock()  # thumbnails are cached from several threads: one warning, not one per thread


def cache_root(conf: dict) -> Path | None:
    """The cache folder from the ``cache`` config section (``$KIT_CACHE`` wins); None when disabled.

    None too, with one warning per folder and process, when the folder cannot be written (read-only disk or HOME,
    a path through a file): the run then goes on without a cache instead of failing at its first shard.
    """
    if not conf.get("enabled", True):
        return None
    env = os.environ.get("KIT_CACHE")
    root = Path(env or conf.get("dir") or "~/.cache/kit").expanduser()
    if root not in _UNUSABLE:
        _UNUSABLE[root] = why = write_problem(root, folder=True, keep_folders=True)
        if why:
            origin = "$KIT_CACHE" if env else "cache.dir"
            warnings.warn(f"the cache folder {root} ({origin}) cannot be used: {why}. Running without a cache, so "
                          "nothing computed now is kept for the next run. Set $KIT_CACHE to a writable folder, or "
                          "--set cache.enabled=false to run without a cache and without this warning.",
                          KitWarning, stacklevel=2)
    return None if _UNUSABLE[root] else root


def spec_hash(spec: dict) -> str:
    """A short stable hash of a JSON-able dict describing how the arrays were made."""
    blob = json.dumps(spec, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha1 of a file's bytes (weights files: a changed checkpoint must invalidate the cache)."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def image_key(path: str | Path) -> str:
    """Content identity of one image: absolute path + byte size + mtime (ns). Cheap: no read of the file."""
    p = Path(path).resolve()
    st = p.stat()
    return hashlib.sha1(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()


def checksum(keys: Sequence[str], arrays: dict[str, np.ndarray]) -> str:
    """CRC-32 (8 hex digits) of a shard's keys and its arrays' names, dtypes, shapes and bytes, in name order."""
    crc = zlib.crc32(json.dumps(list(keys)).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        crc = zlib.crc32(f"{name}|{a.dtype.str}|{a.shape}".encode(), crc)
        crc = zlib.crc32(a.reshape(-1).view(np.uint8), crc)
    return f"{crc:08x}"


def _read_shard(path: Path) -> tuple[list[str], dict[str, np.ndarray]] | None:
    """Keys and arrays of one shard, or None: silently when it vanished since it was listed (another process
    merged it), with a warning (and deleting it) when it is corrupt, truncated or fails its checksum."""
    try:
        arrays = load_file(str(path))
        with open(path, "rb") as fh:  # header metadata holds the keys; load_file does not return it
            n = int.from_bytes(fh.read(8), "little")
            meta = json.loads(fh.read(n))["__metadata__"]
        keys = json.loads(meta["keys"])
        if not arrays or any(len(a) != len(keys) for a in arrays.values()):
            raise ValueError("row count does not match its keys")
        if "crc32" in meta and checksum(keys, arrays) != meta["crc32"]:
            raise ValueError("its values do not match the checksum in its header: they were overwritten")
        if any(a.dtype.kind == "f" and not np.isfinite(a).all() for a in arrays.values()):
            raise ValueError("non-finite values")
        return keys, arrays
    except FileNotFoundError:
        return None
    except Exception as exc:  # any decode failure means the file cannot be trusted
        warnings.warn(f"cache shard {path} is corrupt ({exc}); deleting it, its entries will be recomputed",
                      KitWarning, stacklevel=2)
        path.unlink(missing_ok=True)
        return None


def _root_of(folder: Path) -> Path:
    """The cache root above a stage's folder: ``<root>/<stage>/<spec>``."""
    return Path(folder).parent.parent


def can_write(folder: Path) -> bool:
    """False once a write under ``folder``'s cache root has failed in this process (write_failed)."""
    return _root_of(folder) not in _WRITES_FAILED


def write_failed(folder: Path, exc: BaseException) -> None:
    """Note that writing into the cache folder ``folder`` failed: warn once per cache root and process; can_write is
    False from now on, so the run goes on without caching instead of failing, or warning, at every write."""
    root, why = _root_of(folder), getattr(exc, "strerror", None) or str(exc)
    if code := re.search(r"\(os error (\d+)\)", why):  # safetensors' wording of an OSError: the plain one instead
        why = os.strerror(int(code[1]))
    with _WRITES_LOCK:
        if root in _WRITES_FAILED:
            return
        _WRITES_FAILED[root] = why
    warnings.warn(f"cannot write to the cache folder {root} ({why}; {free_space(root)}). Going on without caching: "
                  "what is computed from now on is not kept for the next run. Free some space there, set $KIT_CACHE "
                  "to a folder on another disk, or --set cache.enabled=false.", KitWarning, stacklevel=3)


def write_shard(folder: Path, keys: Sequence[str], arrays: dict[str, np.ndarray]) -> Path | None:
    """Save ``arrays`` (each ``[len(keys), ...]``) as one new shard in ``folder``, atomically; returns its path, or
    None when the write failed (write_failed has warned, and later writes under the same root are skipped)."""
    if not can_write(folder):
        return None
    final = folder / f"shard-{uuid.uuid4().hex}.safetensors"
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    try:
        with atomic_path(final) as tmp:
            save_file(arrays, tmp, metadata={"keys": json.dumps(list(keys)), "crc32": checksum(keys, arrays)})
    except Exception as exc:  # "any reason": safetensors reports a full disk as SafetensorError, not OSError
        write_failed(folder, exc)
        return None
    return final


def load_shards(folder: Path) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Everything cached in ``folder``: ``(row of each key, arrays)`` with arrays ``[M, ...]``.

    More than MAX_SHARDS shards are merged into one: the merged shard (each key once) is written first, then
    only the shards that went into it are deleted, so a process merging beside another loses nothing.
    """
    shards = sorted(folder.glob("shard-*.safetensors")) if folder.is_dir() else []
    parts = [(p, s) for p in shards if (s := _read_shard(p)) is not None]
    if not parts:
        return {}, {}
    layouts = Counter(tuple(sorted(s[1])) for _, s in parts)
    names = list(layouts.most_common(1)[0][0])  # the most shards' layout: shard names sort in no useful order
    parts = [(p, s) for p, s in parts if sorted(s[1]) == names]  # another layout: left alone, never deleted
    keys = [k for _, (ks, _) in parts for k in ks]
    arrays = {n: np.concatenate([s[1][n] for _, s in parts]) for n in names}
    row_of: dict[str, int] = {}
    for i, k in enumerate(keys):
        row_of.setdefault(k, i)
    if len(parts) > MAX_SHARDS:
        rows = np.fromiter(row_of.values(), np.int64, len(row_of))
        if write_shard(folder, list(row_of), {n: a[rows] for n, a in arrays.items()}) is not None:
            for p, _ in parts:  # only once the merged shard is safely written
                p.unlink(missing_ok=True)
    return row_of, arrays


def cached_compute(
    folder: Path | None,
    keys: Sequence[str],
    compute: Callable[[np.ndarray], dict[str, np.ndarray]],
    flush_every: int = 1024,
    flush_seconds: float | None = None,
    first_chunk: int = 64,
) -> dict[str, np.ndarray]:
    """Arrays for ``keys`` in order, computing only the rows the cache lacks.

    ``compute(idx)`` gets ``idx: [m] int64`` positions into ``keys`` and returns arrays of ``m`` rows each;
    it is called once per chunk of at most ``flush_every`` missing rows, and each chunk is saved before the
    next starts, so an interrupted run resumes where it stopped. ``flush_seconds``: also keep each chunk to
    about that much work, so a slow run saves a shard at least that often: the first chunk has ``first_chunk``
    rows, each next one as many as the last one's speed gives in ``flush_seconds``, rounded down to a multiple of
    ``first_chunk`` (whole batches: the rows are batched as in one uninterrupted call). None: fixed chunks.
    ``folder=None`` disables the cache. Returns ``{name: [len(keys), ...]}`` in the order of ``keys``.
    """
    keys = list(keys)
    if folder is None:
        return compute(np.arange(len(keys), dtype=np.int64)) if keys else {}
    row_of, cached = load_shards(folder)
    missing = np.array([i for i, k in enumerate(keys) if k not in row_of], dtype=np.int64)
    new_parts: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
    unit = max(1, min(flush_every, first_chunk))  # timed chunks are whole multiples of the first (whole batches)
    size = flush_every if flush_seconds is None else unit
    start = 0
    while start < len(missing):
        idx = missing[start:start + size]
        began = time.perf_counter()
        arrays = compute(idx)
        write_shard(folder, [keys[i] for i in idx], arrays)
        new_parts.append((idx, arrays))
        start += len(idx)
        if flush_seconds is not None:  # rows per second so far -> rows in flush_seconds
            rate = len(idx) / max(time.perf_counter() - began, 1e-6)
            size = unit * max(1, int(min(flush_every, rate * flush_seconds) // unit))
    if not keys:
        return {}
    names = sorted(new_parts[0][1]) if new_parts else sorted(cached)
    out: dict[str, np.ndarray] = {}
    for name in names:
        ref = new_parts[0][1][name] if new_parts else cached[name]
        buf = np.empty((len(keys), *ref.shape[1:]), dtype=ref.dtype)
        hit = [(i, row_of[k]) for i, k in enumerate(keys) if k in row_of]
        if hit:
            dst, src = map(np.array, zip(*hit))
            buf[dst] = cached[name][src]
        for idx, arrays in new_parts:
            buf[idx] = arrays[name]
        out[name] = buf
    return out
