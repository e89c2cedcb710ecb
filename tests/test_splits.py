"""Open- and closed-set splits: property tests over random label layouts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.splits import hide_answers, name_folds, open_set_split


@st.composite
def labelled(draw):
    n_data = draw(st.integers(1, 3))
    rows = []
    for d in range(n_data):
        sizes = draw(st.lists(st.integers(1, 7), min_size=2, max_size=15))
        for i, n in enumerate(sizes):
            rows += [{"image_id": f"{d}-{i}-{j}", "identity": f"D{d}_{i}", "dataset": f"D{d}"} for j in range(n)]
    return pd.DataFrame(rows)


@settings(max_examples=60, deadline=None)
@given(labelled(), st.integers(0, 10_000), st.integers(1, 40), st.booleans())
def test_open_set_split_properties(df, seed, n_unknown, stable):
    s = open_set_split(df, n_unknown=n_unknown, seed=seed, stable=stable)
    assert len(s) == len(df) and s["image_id"].is_unique  # every image exactly once, on one side
    db, q = s[s["split"] == "database"], s[s["split"] == "query"]
    for name, part in s.groupby("dataset"):
        part_db = part[part["split"] == "database"]
        unknown = set(part.loc[part["new_identity"], "identity"])
        assert not unknown & set(part_db["identity"])  # no unknown identity in the database
        assert (part.loc[part["new_identity"], "split"] == "query").all()
        known_q = part[(part["split"] == "query") & ~part["new_identity"]]
        assert set(known_q["identity"]) <= set(part_db["identity"])  # known queries can be matched
        assert len(part_db) > 0
    # deterministic by seed
    pd.testing.assert_frame_equal(s, open_set_split(df, n_unknown=n_unknown, seed=seed, stable=stable))


def test_open_set_unknown_size_and_cap():
    df = pd.DataFrame({"identity": [f"i{k // 5}" for k in range(1000)], "dataset": "A",
                       "image_id": [str(k) for k in range(1000)]})
    s = open_set_split(df, n_unknown=100, seed=0)
    assert s["new_identity"].sum() == 100  # 20 identities of 5
    s = open_set_split(df, n_unknown=500, seed=0)
    assert s["new_identity"].sum() == 250  # capped at a quarter of a small dataset


def test_datasets_are_split_independently():
    a = pd.DataFrame({"identity": [f"a{k // 3}" for k in range(60)], "dataset": "A"})
    b = pd.DataFrame({"identity": [f"b{k // 3}" for k in range(60)], "dataset": "B"})
    alone = open_set_split(a, unknown_fraction=0.25, seed=5)
    both = open_set_split(pd.concat([a, b], ignore_index=True), unknown_fraction=0.25, seed=5)
    pd.testing.assert_frame_equal(alone, both.iloc[:60])


def test_hide_answers_strips_query_labels():
    df = pd.DataFrame({"identity": [f"i{k // 4}" for k in range(40)], "dataset": "A",
                       "image_id": [str(k) for k in range(40)]})
    db, q, sol = hide_answers(open_set_split(df, unknown_fraction=0.3, seed=0))
    assert (q["identity"] == "").all()
    assert list(sol["image_id"]) == list(q["image_id"])
    assert (sol["identity"] != "").all()


def test_exactly_one_unknown_size():
    with pytest.raises(ValueError):
        open_set_split(pd.DataFrame({"identity": ["a"], "dataset": ["A"]}))


def _renamed(df: pd.DataFrame, old: str, new: str) -> pd.DataFrame:
    """``df`` with identity ``old`` of dataset A called ``new``."""
    hit = (df["identity"] == old) & (df["dataset"] == "A")
    return df.assign(identity=df["identity"].where(~hit, new))


def test_name_folds_move_only_the_renamed_identity():
    names = [f"id{i:03d}" for i in range(60)]
    before = name_folds(names, 5, seed=3)
    after = name_folds(["zz-renamed"] + names[1:], 5, seed=3)
    assert (before[1:] == after[1:]).all()  # every other identity keeps its fold
    assert sorted(set(before)) == list(range(5))  # and every fold is used
    assert not (name_folds(names, 5, seed=4) == before).all()  # the seed still matters
    few = name_folds(["a", "b", "c"], 5, seed=0)  # fewer names than folds: each its own fold
    assert sorted(few) == [0, 1, 2]


def test_a_stable_split_does_not_move_when_another_identity_is_renamed():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"identity": [f"id{i:02d}" for i in rng.integers(0, 40, 400)], "dataset": "A"})
    df = pd.concat([df, df.assign(dataset="B")], ignore_index=True)
    for renamed in ("id05", "id17", "id33"):
        before = open_set_split(df, n_unknown=60, seed=2, stable=True)
        after = open_set_split(_renamed(df, renamed, "a-new-name"), n_unknown=60, seed=2, stable=True)
        other = ((df["identity"] != renamed) & (df["dataset"] == "A")).to_numpy()
        same = (before[["split", "new_identity"]] == after[["split", "new_identity"]]).all(axis=1).to_numpy()
        # at most the identities whose held-out place the renamed one took or gave up move; dataset B never does
        assert same[(df["dataset"] == "B").to_numpy()].all()
        assert same[other].mean() > 0.9, renamed
    # the plain split (a shuffle of the sorted names) moves many: the reason stable exists
    plain = [open_set_split(d, n_unknown=60, seed=2)["split"].to_numpy()[:400]
             for d in (df, _renamed(df, "id00", "zz"))]
    assert (plain[0] != plain[1]).mean() > 0.05
