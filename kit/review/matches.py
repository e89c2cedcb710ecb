"""The local matches to draw: one pair's matched keypoints, from the matcher that ran (the plan's first scorer).

Features come from the scorer's own cache (``scorer.extract(paths, cache_dir)``: what the run already extracted is
read back, nothing is extracted twice); ``scorer.correspondences`` gives each pair's matches in px of the resized
photo (``features["image_size"]``, W x H). They are kept here as fractions of the photo's width and height, so the
site scales them onto any thumbnail of the same upright photo (kit/review/site.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def pair_matches(scorer, paths_a: Sequence[str], paths_b: Sequence[str], pairs: np.ndarray,
                 cache_dir: Path | None, max_lines: int = 60) -> list[dict]:
    """Matches of each pair ``(i, j)`` of ``pairs: [P, 2]`` (row of paths_a, row of paths_b).

    Returns one dict per pair: ``n`` (how many matches the matcher found), ``lines: [n', 4] float32`` (xa, ya, xb,
    yb as fractions of each photo's width and height) and ``conf: [n']`` for its ``max_lines`` most confident
    matches, most confident first.
    """
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    if not len(pairs):
        return []
    rows_a, inv_a = np.unique(pairs[:, 0], return_inverse=True)
    rows_b, inv_b = np.unique(pairs[:, 1], return_inverse=True)
    fa = scorer.extract([paths_a[i] for i in rows_a], cache_dir)
    fb = scorer.extract([paths_b[j] for j in rows_b], cache_dir)
    out = []
    for a, b in zip(inv_a.ravel(), inv_b.ravel()):
        if int(fa["count"][a]) == 0 or int(fb["count"][b]) == 0:
            out.append({"n": 0, "lines": np.zeros((0, 4), np.float32), "conf": np.zeros(0, np.float32)})
            continue
        ka, kb, conf = scorer.correspondences(fa, int(a), fb, int(b))
        order = np.argsort(-np.asarray(conf), kind="stable")[:max_lines]
        wa, ha = (float(v) for v in fa["image_size"][a])
        wb, hb = (float(v) for v in fb["image_size"][b])
        lines = np.stack([ka[order, 0] / wa, ka[order, 1] / ha, kb[order, 0] / wb, kb[order, 1] / hb], 1)
        out.append({"n": int(len(conf)), "lines": np.clip(lines, 0, 1).astype(np.float32),
                    "conf": np.asarray(conf, np.float32)[order]})
    return out
