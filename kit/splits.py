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


def _rng(seed: int, dataset: str, identity: str | None = None) -> np.random.Generator:
    keys = [seed, zlib.crc32(str(dataset).encode())] + ([] if identity is None else [zlib.crc32(identity.encode())])
    return np.random.default_rng(keys)


def _name_key(seed: int, name: str) -> int:
    return zlib.crc32(f"{seed}\x1f{name}".encode())


def anchors(frame: pd.DataFrame) -> dict:
    """{identity: a key made of its photos, not its name} (the smallest ``image_id`` of its rows, else the smallest
    ``path``, else the name itself): what stable splits and folds hash, so that renaming an identity changes
    nothing at all."""
    col = next((c for c in ("image_id", "path", "filepath") if c in frame.columns), None)
    if col is None:
        return {i: str(i) for i in frame["identity"].unique()}
    return {i: f"{col}:{v}" for i, v in frame.groupby("identity", sort=False)[col].min().astype(str).items()}


def name_folds(names, k: int, seed: int) -> np.ndarray:
    """[n] int fold of each of ``names`` (identity keys, ``anchors``; equal keys share a fold), from a hash of
    (seed, key) alone: no other key moves it (a fold from a shuffle of all the sorted names moved every one, and a
    pooled model carried that into every dataset). Where hashing leaves a fold empty (few keys), the keys are dealt
    out in hash order instead."""
    uniq, inv = np.unique(np.asarray(names, dtype=str), return_inverse=True)
    key = np.array([_name_key(seed, n) for n in uniq], np.int64)
    k = max(1, min(int(k), len(uniq)))
    fold = key % k
    if len(np.unique(fold)) < k:
        fold = np.empty(len(uniq), np.int64)
        fold[np.argsort(key, kind="stable")] = np.arange(len(uniq)) % k
    return fold[inv]


def _known_queries(group: pd.DataFrame, query_fraction: float, rng: np.random.Generator,
                   stable: tuple[int, str, dict] | None = None) -> list:
    """Index labels of query images drawn from each identity, always leaving one in the database. ``stable``
    (seed, dataset, ``anchors``): each identity draws from its own generator, keyed by its photos, so no name
    changes anything."""
    picked = []
    for name, ident in group.groupby("identity", sort=True):
        n = len(ident)
        if n < 2:  # its only image must stay in the database, or the query could never be matched
            continue
        k = int(np.clip(np.round(query_fraction * n), 1, n - 1))
        draw = rng if stable is None else _rng(stable[0], stable[1], stable[2][name])
        picked += list(draw.choice(ident.index.to_numpy(), size=k, replace=False))
    return picked


def open_set_split(
    df: pd.DataFrame,
    n_unknown: int | None = None,
    unknown_fraction: float | None = None,
    query_fraction: float = 0.3,
    seed: int = 0,
    max_unknown_share: float = MAX_UNKNOWN_SHARE,
    stable: bool = False,
) -> pd.DataFrame:
    """Hold out whole identities as unknown individuals, plus queries of the known ones.

    Unknowns are chosen per dataset in a seeded random order until their images reach the target: about
    ``n_unknown`` images (capped at ``max_unknown_share`` of the dataset's images, so a small dataset keeps
    most of its database), or a share ``unknown_fraction`` of the identities. Exactly one of the two.
    All images of an unknown identity become queries; known identities give ``query_fraction`` of their
    images (at least one image of each stays in the database).

    ``stable``: the identities are taken in the order of a hash of (seed, dataset, its photos' ``anchors``), and
    each one's known queries drawn from its own generator, so renaming identities changes nothing (the calibration
    splits use this: a label must not move a threshold). Default: a seeded shuffle of the sorted names.
    """
    if (n_unknown is None) == (unknown_fraction is None):
        raise ValueError("give exactly one of n_unknown or unknown_fraction")
    out = df.copy()
    out["split"] = "database"
    out["new_identity"] = False
    for name, group in out.groupby("dataset", sort=True):
        rng = _rng(seed, name)
        ids = np.array(sorted(group["identity"].unique()))
        anchor = anchors(group) if stable else {}
        if stable:
            ids = np.array(sorted(ids, key=lambda i: (_name_key(seed, f"{name}\x1f{anchor[i]}"), anchor[i])))
        else:
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
        keyed = (seed, str(name), anchor) if stable else None
        out.loc[_known_queries(known, query_fraction, rng, keyed), "split"] = "query"
    return out


def hide_answers(split: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(database, queries, solution)`` from a split: the queries lose their identity column's values,
    and the solution (image_id, identity, dataset, new_identity) is the answer key, kept apart."""
    db = split[split["split"] == "database"].copy()
    q = split[split["split"] == "query"].copy()
    solution = q[["image_id", "identity", "dataset", "new_identity"]].reset_index(drop=True)
    q["identity"] = ""
    return db.reset_index(drop=True), q.reset_index(drop=True), solution
