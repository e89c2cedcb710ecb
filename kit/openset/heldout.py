"""Held-out open-set splits of a labelled database, on which the open-set score and tau are chosen.

Whole identities are held out as unknown individuals, together with query images of the known ones. A small
dataset gets several such splits, with different identities held out, pooled until about ``openset.n_unknown``
unknown images have been seen. Optionally, the split's known:unknown query mix follows the one estimated for the
real (unlabelled) queries.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..splits import open_set_split


def n_repeats(n_unknown_seen: int, n_unknown_target: int, setting, max_repeats: int) -> int:
    """How many held-out splits to pool: ``setting`` when an int, else ("auto") enough splits for about
    ``n_unknown_target`` unknown images in total when one split holds ``n_unknown_seen``, at most
    ``max_repeats``."""
    if setting != "auto":
        return max(1, int(setting))
    if n_unknown_seen <= 0:
        return 1
    return int(np.clip(np.ceil(n_unknown_target / n_unknown_seen), 1, max(1, max_repeats)))


def calibration_splits(db: pd.DataFrame, n_unknown: int, query_fraction: float, repeats, max_repeats: int,
                       seed: int) -> list[pd.DataFrame]:
    """Held-out open-set splits of one dataset's labelled images (``db``: columns identity, dataset).

    Each split is ``splits.open_set_split`` with seed ``seed + r`` (columns split, new_identity added): whole
    identities held out as unknown queries (about ``n_unknown`` images, capped for a small dataset), and
    ``query_fraction`` of each known identity's images as known queries. Splits where either kind of query
    is missing are dropped; an empty list means the dataset is too small to calibrate on.
    """
    out: list[pd.DataFrame] = []
    first = open_set_split(db, n_unknown=n_unknown, query_fraction=query_fraction, seed=seed, stable=True)
    want = n_repeats(int(first["new_identity"].sum()), n_unknown, repeats, max_repeats)
    for r in range(want):
        s = first if r == 0 else open_set_split(db, n_unknown=n_unknown, query_fraction=query_fraction,
                                                seed=seed + r, stable=True)
        q = s[s["split"] == "query"]
        if q["new_identity"].any() and (~q["new_identity"]).any():
            out.append(s)
    return out


def estimate_unknown_share(real: np.ndarray, known: np.ndarray, unknown: np.ndarray) -> float:
    """Share of unknown individuals among unlabelled queries, from their score distribution.

    real: [Q] scores of the unlabelled queries; known, unknown: scores of labelled held-out known and
    unknown queries. Fits the empirical CDF of ``real`` as ``pi * F_unknown + (1 - pi) * F_known`` by least
    squares over the pooled scores (closed form), clipped to [0, 1]. NaN when a sample is empty or the two
    labelled distributions are identical.
    """
    real, known, unknown = (np.sort(np.asarray(a, np.float64)) for a in (real, known, unknown))
    if not (len(real) and len(known) and len(unknown)):
        return float("nan")
    grid = np.unique(np.r_[real, known, unknown])
    cdf = [np.searchsorted(a, grid, side="right") / len(a) for a in (real, known, unknown)]
    d_real, d_unknown = cdf[0] - cdf[1], cdf[2] - cdf[1]
    den = float(d_unknown @ d_unknown)
    if den <= 0:
        return float("nan")
    return float(np.clip(d_real @ d_unknown / den, 0.0, 1.0))


def matched_query_fraction(unknown_share: float, n_unknown_images: int, n_known_images: int,
                           default: float, lo: float = 0.1, hi: float = 0.5) -> float:
    """Share of each known identity's images to hold out as queries so that known:unknown queries match an
    estimated ``unknown_share`` of the real queries; ``default`` when the share is unknown or 0/1."""
    if not np.isfinite(unknown_share) or not 0 < unknown_share < 1 or n_known_images <= 0:
        return default
    want_known = n_unknown_images * (1 - unknown_share) / unknown_share
    return float(np.clip(want_known / n_known_images, lo, hi))
