"""Splits of a labelled database into a database and queries, for validation and calibration.

Every split is made per dataset, with a seed derived from (seed, dataset name), so adding a dataset does
not reshuffle the others, and the same seed always gives the same split.

Input frames need the columns ``identity`` and ``dataset`` (one row per image, any extra columns kept).
Output frames are copies with ``split`` in {database, query} and ``new_identity`` (bool: the query's
identity is absent from the database).
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

MAX_UNKNOWN_SHARE = 0.25  # unknowns take at most this share of a small dataset's images


def _rng(seed: int, dataset: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(str(dataset).encode())])


def _known_queries(group: pd.DataFrame, query_fraction: float, rng: np.random.Generator) -> list:
    """Index labels of query images drawn from each identity, always leaving one in the database."""
    picked = []
    for _, ident in group.groupby("identity", sort=True):
        n = len(ident)
        if n < 2:  # its only image must stay in the database, or the query could never be matched
            continue
        k = int(np.clip(np.round(query_fraction * n), 1, n - 1))
        picked += list(rng.choice(ident.index.to_numpy(), size=k, replace=False))
    return picked


def open_set_split(
    df: pd.DataFrame,
    n_unknown: int | None = None,
    unknown_fraction: float | None = None,
    query_fraction: float = 0.3,
    seed: int = 0,
    max_unknown_share: float = MAX_UNKNOWN_SHARE,
) -> pd.DataFrame:
    """Hold out whole identities as unknown individuals, plus queries of the known ones.

    Unknowns are chosen per dataset in a seeded random order until their images reach the target: about
    ``n_unknown`` images (capped at ``max_unknown_share`` of the dataset's images, so a small dataset keeps
    most of its database), or a share ``unknown_fraction`` of the identities. Exactly one of the two.
    All images of an unknown identity become queries; known identities give ``query_fraction`` of their
    images (at least one image of each stays in the database).
    """
    if (n_unknown is None) == (unknown_fraction is None):
        raise ValueError("give exactly one of n_unknown or unknown_fraction")
    out = df.copy()
    out["split"] = "database"
    out["new_identity"] = False
    for name, group in out.groupby("dataset", sort=True):
        rng = _rng(seed, name)
        ids = np.array(sorted(group["identity"].unique()))
        rng.shuffle(ids)
        if unknown_fraction is not None:
            n_ids = int(round(unknown_fraction * len(ids)))
            unknown = set(ids[:min(n_ids, len(ids) - 1)])  # at least one identity stays known
        else:
            target = min(n_unknown, max_unknown_share * len(group))
            sizes = group["identity"].value_counts()
            unknown, total = set(), 0
            for ident in ids[:-1]:
                if total >= target:
                    break
                unknown.add(ident)
                total += sizes[ident]
        is_unknown = group["identity"].isin(unknown)
        out.loc[group.index[is_unknown], ["split", "new_identity"]] = ["query", True]
        known = group[~is_unknown]
        out.loc[_known_queries(known, query_fraction, rng), "split"] = "query"
    return out


def hide_answers(split: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(database, queries, solution)`` from a split: the queries lose their identity column's values,
    and the solution (image_id, identity, dataset, new_identity) is the answer key, kept apart."""
    db = split[split["split"] == "database"].copy()
    q = split[split["split"] == "query"].copy()
    solution = q[["image_id", "identity", "dataset", "new_identity"]].reset_index(drop=True)
    q["identity"] = ""
    return db.reset_index(drop=True), q.reset_index(drop=True), solution
