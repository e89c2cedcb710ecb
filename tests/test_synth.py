"""kit.synth: folder layout, splits, answer key, determinism, and refusal of a used folder."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from kit import synth
from kit.errors import ConfigError, DataError
from kit.synth import DATASETS, LAYOUTS, make_competition

TINY = dict(identities=4, images_per_identity=(2, 3), image_size=64)
COLUMNS = ["image_id", "identity", "path", "date", "orientation", "species", "split", "dataset"]
HELD_OUT = {"2025": "query", "2026": "test"}


def read(root, name) -> pd.DataFrame:
    return pd.read_csv(root / name, dtype=str, keep_default_na=False)


def hashes(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def comps(tmp_path_factory) -> dict:
    """One tiny competition per layout, shared by the read-only tests below."""
    base = tmp_path_factory.mktemp("synth")
    return {layout: make_competition(base / layout, layout=layout, seed=5, **TINY) for layout in LAYOUTS}


@pytest.mark.parametrize("layout", ["2025", "2026"])
def test_same_arguments_give_byte_identical_files_and_the_seed_matters(tmp_path, layout):
    first = hashes(make_competition(tmp_path / "a", layout=layout, seed=3, **TINY))
    again = hashes(make_competition(tmp_path / "b", layout=layout, seed=3, **TINY))
    other = hashes(make_competition(tmp_path / "c", layout=layout, seed=4, **TINY))
    assert first == again
    assert {"metadata.csv", "solution.csv", "sample_submission.csv"} <= set(first)
    images = lambda h: {v for k, v in h.items() if k.endswith(".jpg")}  # noqa: E731
    assert images(first).isdisjoint(images(other))


@pytest.mark.parametrize("layout", ["2025", "2026"])
def test_metadata_columns_values_and_images(comps, layout):
    root = comps[layout]
    meta = read(root, "metadata.csv")
    assert list(meta.columns) == COLUMNS
    assert meta["image_id"].is_unique and meta["image_id"].str.fullmatch(r"\d+").all()
    assert set(meta["dataset"]) == set(LAYOUTS[layout])
    assert set(meta["split"]) == ({"database", "query"} if layout == "2025" else {"train", "test"})
    held = meta["split"] == HELD_OUT[layout]
    assert (meta.loc[held, "identity"] == "").all()
    assert (meta.loc[~held, "identity"].str.split("_").str[0] == meta.loc[~held, "dataset"]).all()
    for row in meta.itertuples():
        assert row.orientation in DATASETS[row.dataset]["orientations"]
        assert row.species == DATASETS[row.dataset]["species"]
        assert row.date == "" or re.fullmatch(r"\d{4}-\d\d-\d\d", row.date) and pd.Timestamp(row.date)
        folder = f"train/{row.identity}" if row.split == "train" else row.split
        assert row.path == f"images/{row.dataset}/{folder}/{row.image_id}.jpg"
        with Image.open(root / row.path) as img:
            img.load()
            assert img.mode == "RGB" and img.size == (64, 64)
    assert len(list((root / "images").rglob("*.jpg"))) == len(meta)


def test_2025_unknowns_only_among_queries_and_answer_key_matches(comps):
    root = comps["2025"]
    meta, solution, sample = (read(root, n) for n in ("metadata.csv", "solution.csv", "sample_submission.csv"))
    queries = meta[meta["split"] == "query"]
    assert list(solution.columns) == ["image_id", "identity", "dataset", "new_identity"]
    assert list(solution["image_id"]) == list(queries["image_id"])
    assert list(solution["dataset"]) == list(queries["dataset"])
    assert list(sample.columns) == ["image_id", "identity"]
    assert list(sample["image_id"]) == list(queries["image_id"]) and (sample["identity"] == "new_individual").all()
    in_database = set(meta.loc[meta["split"] == "database", "identity"])
    new = solution["new_identity"] == "True"
    assert set(solution["new_identity"]) == {"True", "False"}
    assert (new == ~solution["identity"].isin(in_database)).all()
    for name in LAYOUTS["2025"]:  # every dataset has known and unknown individuals among its queries
        mine = solution[solution["dataset"] == name]
        assert new[mine.index].any() and not new[mine.index].all()


def test_2025_fractions_are_respected(tmp_path):
    root = make_competition(tmp_path / "c", identities=8, images_per_identity=(4, 4), image_size=32,
                            unknown_fraction=0.25, query_fraction=0.5, datasets=["SynSalamander"])
    meta, solution = read(root, "metadata.csv"), read(root, "solution.csv")
    unknown = set(solution.loc[solution["new_identity"] == "True", "identity"])
    assert len(unknown) == 2  # 25% of 8
    known = solution[solution["new_identity"] == "False"]
    assert (known.groupby("identity").size() == 2).all() and known["identity"].nunique() == 6  # half of 4 photos
    assert (meta.loc[meta["split"] == "database"].groupby("identity").size() == 2).all()


def test_2026_lizards_are_test_only_and_test_mixes_known_and_new(comps):
    root = comps["2026"]
    meta, solution, sample = (read(root, n) for n in ("metadata.csv", "solution.csv", "sample_submission.csv"))
    test = meta[meta["split"] == "test"]
    assert not ((meta["dataset"] == "SynLizard") & (meta["split"] == "train")).any()
    assert (test["dataset"] == "SynLizard").sum() >= 2 * TINY["identities"]
    assert list(solution.columns) == ["image_id", "identity", "dataset"]
    assert list(solution["image_id"]) == list(test["image_id"])
    assert list(sample.columns) == ["image_id", "cluster"] and list(sample["image_id"]) == list(test["image_id"])
    assert list(sample["cluster"]) == [f"cluster_{d}_{i}" for d, i in zip(test["dataset"], test["image_id"])]
    for name in LAYOUTS["2026"]:
        trained = set(meta.loc[(meta["split"] == "train") & (meta["dataset"] == name), "identity"])
        tested = solution[solution["dataset"] == name].groupby("identity").size()
        new = tested[~tested.index.isin(trained)]
        assert len(new) >= 1 and (new >= 2).all()  # new individuals come with several photos: clusters
        assert name == "SynLizard" or tested.index.isin(trained).any()


def test_a_subset_of_datasets_reproduces_the_same_photos(tmp_path, comps):
    alone = make_competition(tmp_path / "turtles", layout="2025", seed=5, datasets=["SynTurtle"], **TINY)
    photos = lambda root: sorted(v for k, v in hashes(root).items() if k.startswith("images/SynTurtle/"))  # noqa: E731
    assert photos(alone) == photos(comps["2025"])


def test_refuses_a_non_empty_folder_and_leaves_no_trace(tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        make_competition(used, **TINY)
    assert [p.name for p in tmp_path.iterdir()] == ["used"]
    assert [p.name for p in used.iterdir()] == ["keep.txt"]


def test_fills_an_existing_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    root = make_competition(tmp_path / "empty", **TINY)
    assert (root / "metadata.csv").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]  # the temporary folder was renamed away


@pytest.mark.parametrize("bad", [dict(layout="2024"), dict(identities=0), dict(images_per_identity=(3, 2)),
                                 dict(unknown_fraction=1.5), dict(query_fraction=-0.1), dict(image_size=8),
                                 dict(datasets=["SynCat"]), dict(seed=-1)])
def test_bad_arguments_are_refused_before_writing(tmp_path, bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        make_competition(tmp_path / "c", **{**TINY, **bad})
    assert not any(tmp_path.iterdir())


def test_a_lynx_shows_a_different_pattern_on_each_flank():
    looks = synth._draw_lynx(np.random.default_rng(0), 96)
    right = np.asarray(looks["right"].convert("RGBA"), np.float32)
    left_unmirrored = np.asarray(ImageOps.mirror(looks["left"]).convert("RGBA"), np.float32)
    body = right[..., 3] > 250
    assert np.array_equal(right[..., 3], left_unmirrored[..., 3])  # same silhouette, facing the other way
    assert np.abs(right[..., :3] - left_unmirrored[..., :3])[body].mean() > 10

