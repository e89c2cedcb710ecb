"""Open- and closed-set splits: property tests over random label layouts."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.splits import hide_answers, open_set_split


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
@given(labelled(), st.integers(0, 10_000), st.integers(1, 40))
def test_open_set_split_properties(df, seed, n_unknown):
    s = open_set_split(df, n_unknown=n_unknown, seed=seed)
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
    pd.testing.assert_frame_equal(s, open_set_split(df, n_unknown=n_unknown, seed=seed))


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
