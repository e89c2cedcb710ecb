"""Thumbnails for the review pages: small JPEGs, cached once per photo under the kit cache root.

A photo's thumbnail is ``<cache>/thumbs/<size>px-v<version>/<image key>.jpg`` (kit.cache.image_key: absolute path,
size and mtime, so an edited photo gets a new one), its long side ``size`` px, upright (kit.data.open_image applies
EXIF orientation, as every matcher does, so keypoints scale onto it). A site gets a copy named by the same key
(``thumbs/<key>.jpg``), so rebuilding a site, or another site of the same photos, decodes nothing again. Without a
cache (``cache.enabled: false``) thumbnails are written straight into the site. Every file goes through kit.io.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..cache import can_write, image_key, write_failed
from ..data import open_image
from ..io import atomic_path, copy_file

VERSION = 1  # bump when the thumbnail recipe changes: old cached ones are then left alone
QUALITY = 82  # JPEG quality of a thumbnail (about 10-20 KB at 256 px)


def _make(src: str, dst: Path, size: int) -> None:
    im = open_image(src, min_side=size)
    im.thumbnail((size, size), Image.BILINEAR)
    with atomic_path(dst) as tmp:
        im.save(tmp, format="JPEG", quality=QUALITY)


def make_thumbnails(paths: Sequence[str], out_dir: str | Path, size: int = 256, cache_dir: Path | None = None,
                    workers: int | None = None) -> tuple[dict[str, tuple[str, int, int]], dict[str, int]]:
    """Thumbnails of ``paths`` in ``out_dir`` (the site's ``thumbs/``).

    Returns ({path: (file name in out_dir, width, height)}, {"made", "cached", "kept"}: thumbnails decoded from the
    photo now, copied from the cache, or already in the site). ``workers``: threads (decoding releases the GIL).
    """
    out_dir = Path(out_dir)
    folder = None if cache_dir is None else Path(cache_dir) / "thumbs" / f"{size}px-v{VERSION}"
    unique = list(dict.fromkeys(str(p) for p in paths))
    stats = {"made": 0, "cached": 0, "kept": 0}

    def one(src: str) -> tuple[str, str, int, int, str]:
        key = image_key(src)
        dst = out_dir / f"{key}.jpg"
        how = "kept"
        if not dst.is_file():
            cached = None if folder is None else folder / f"{key}.jpg"
            if cached is not None and cached.is_file():
                how = "cached"
            else:
                if cached is not None and not can_write(folder):
                    cached = None
                try:
                    _make(src, cached if cached is not None else dst, size)
                except OSError as exc:  # the cache's disk is full: warn once, make it straight into the site
                    if cached is None:
                        raise
                    write_failed(folder, exc)
                    cached = None
                    _make(src, dst, size)
                how = "made"
            if cached is not None:
                copy_file(cached, dst)
        with Image.open(dst) as im:  # reads the header only
            w, h = im.size
        return src, dst.name, w, h, how

    workers = workers or min(8, os.cpu_count() or 1)
    out = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for src, name, w, h, how in pool.map(one, unique):
            out[src] = (name, w, h)
            stats[how] += 1
    return out, stats
