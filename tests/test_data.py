"""The data layer: reading, validating, robust image decoding, folder import."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from kit.data import check_image, import_folders, open_image, read_competition
from kit.io import read_csv_str
from kit.schema import COLUMNS
from kit.errors import DataError, ImageError


def tree_hash(root):
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_reads_synthetic_competition(tiny_2025):
    df = read_competition(tiny_2025)
    assert df.attrs["layout"] == "2025"
    assert list(df.columns[:8]) == COLUMNS
    assert set(df["split"]) == {"database", "query"}
    assert (df.loc[df["split"] == "query", "identity"] == "").all()
    assert all(Image.open(p).size for p in df["filepath"][:3])


def test_reads_2026_layout(tiny_2026):
    df = read_competition(tiny_2026)
    assert df.attrs["layout"] == "2026"
    assert set(df["split"]) == {"train", "test"}


def _edit(comp, fn):
    meta = read_csv_str(comp / "metadata.csv")
    meta = fn(meta)
    meta.to_csv(comp / "metadata.csv", index=False)


@pytest.mark.parametrize("breakage, message", [
    (lambda m: m.drop(columns=["dataset"]), r"missing column\(s\) \['dataset'\]"),
    (lambda m: m.assign(image_id=[m["image_id"][0]] * len(m)), r"line 3 .*duplicate image_id"),
    (lambda m: m.assign(dataset=np.where(m.index == 4, "", m["dataset"])), r"line 6 .*without a dataset"),
    (lambda m: m.assign(identity=np.where((m["split"] == "database") & (m.index == m.index[m["split"] == "database"][0]),
                                          "", m["identity"])), r"database row without an identity"),
    (lambda m: m.assign(split=np.where(m.index == 0, "train", m["split"])), r"not a mix"),
    (lambda m: m.assign(path=np.where(m.index == 2, "images/nope.jpg", m["path"])), r"line 4 .*nope.jpg: file not found"),
])
def test_broken_metadata_is_reported_and_nothing_changes(comp_copy, breakage, message):
    _edit(comp_copy, breakage)
    before = tree_hash(comp_copy)
    with pytest.raises(DataError, match=message):
        read_competition(comp_copy)
    assert tree_hash(comp_copy) == before


def test_all_problems_reported_at_once(comp_copy):
    _edit(comp_copy, lambda m: m.assign(dataset=np.where(m.index < 3, "", m["dataset"])))
    with pytest.raises(DataError, match=r"3 problem\(s\)") as err:
        read_competition(comp_copy)
    assert "line 2" in str(err.value) and "line 4" in str(err.value)


def test_paths_outside_the_folder_are_warned_about_once(comp_copy, tmp_path):
    import shutil
    import warnings

    from kit.errors import KitWarning

    meta = read_csv_str(comp_copy / "metadata.csv")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for i in (1, 2):
        shutil.copy(comp_copy / meta.at[i, "path"], outside / f"{i}.jpg")
    meta.loc[1, "path"] = "../elsewhere/1.jpg"
    meta.loc[2, "path"] = str(outside / "2.jpg")
    meta.to_csv(comp_copy / "metadata.csv", index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = read_competition(comp_copy)  # it still runs
    said = [str(w.message) for w in caught if issubclass(w.category, KitWarning)]
    assert len(said) == 1, said
    assert said[0].startswith(f"2 path(s) lead outside the competition folder {comp_copy}: ")
    assert f"line 3 (image_id {meta.at[1, 'image_id']!r}): ../elsewhere/1.jpg" in said[0]
    assert f"line 4 (image_id {meta.at[2, 'image_id']!r}): {outside / '2.jpg'}" in said[0]
    assert "move them inside it" in said[0]
    assert df.at[1, "filepath"] == str(outside / "1.jpg")
    (comp_copy / "linked").symlink_to(outside)  # a folder inside that links to another disk: inside, by its path
    meta.loc[[1, 2], "path"] = ["linked/1.jpg", "linked/2.jpg"]
    meta.to_csv(comp_copy / "metadata.csv", index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_competition(comp_copy)
    assert not [w for w in caught if issubclass(w.category, KitWarning)]


def test_identity_and_image_id_are_read_byte_exact(comp_copy):
    """The metric compares them exactly, so " lynx" must not become "lynx"; a value of spaces only is empty."""
    meta = read_csv_str(comp_copy / "metadata.csv")
    db, q = meta.index[meta["split"] == "database"], meta.index[meta["split"] == "query"]
    meta.loc[db[0], "identity"] = " " + meta.at[db[0], "identity"]
    meta.loc[db[1], "identity"] = meta.at[db[1], "identity"] + "  "
    meta.loc[q[0], "identity"] = "   "  # a query's blank identity is no identity
    meta.loc[q[1], "image_id"] = meta.at[q[1], "image_id"] + " "
    meta.loc[db[2], "split"] = " database "  # structural columns are still stripped
    meta.to_csv(comp_copy / "metadata.csv", index=False)
    df = read_competition(comp_copy)
    assert df.at[db[0], "identity"] == meta.at[db[0], "identity"] and df.at[db[0], "identity"].startswith(" ")
    assert df.at[db[1], "identity"] == meta.at[db[1], "identity"]
    assert df.at[q[0], "identity"] == ""
    assert df.at[q[1], "image_id"].endswith(" ")
    assert df.at[db[2], "split"] == "database"


def test_missing_metadata_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="kit import-folders"):
        read_competition(tmp_path)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_jpeg_is_caught_by_validation(comp_copy):
    meta = read_csv_str(comp_copy / "metadata.csv")
    victim = comp_copy / meta["path"][5]
    _truncate(victim)
    with pytest.raises(DataError, match=r"line 7 .*truncated JPEG"):
        read_competition(comp_copy)


def test_truncated_jpeg_decode_error_names_file(tmp_path):
    p = tmp_path / "t.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(p, quality=90)
    _truncate(p)
    assert "truncated" in check_image(p)
    with pytest.raises(ImageError, match="t.jpg: cannot decode"):
        open_image(p)


def test_open_image_modes(tmp_path):
    rng = np.random.default_rng(0)
    gray = tmp_path / "g.png"
    Image.fromarray(rng.integers(0, 255, (20, 30), np.uint8), "L").save(gray)
    cmyk = tmp_path / "c.jpg"
    Image.new("CMYK", (30, 20), (0, 255, 0, 0)).save(cmyk)
    rgba = tmp_path / "a.png"
    arr = np.zeros((20, 30, 4), np.uint8)
    arr[..., 0] = 255  # red, fully transparent on the left half
    arr[:, 15:, 3] = 255
    Image.fromarray(arr, "RGBA").save(rgba)
    for p in (gray, cmyk, rgba):
        im = open_image(p)
        assert im.mode == "RGB" and im.size == (30, 20)
    a = np.asarray(open_image(rgba))
    assert tuple(a[0, 0]) == (255, 255, 255)  # transparent -> white background
    assert tuple(a[0, 20]) == (255, 0, 0)
    assert np.asarray(open_image(cmyk))[0, 0, 1] < 50  # magenta ink: little green


def test_exif_rotation_applied(tmp_path):
    p = tmp_path / "r.jpg"
    im = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    im.save(p, exif=exif)
    assert open_image(p).size == (20, 40)


def test_draft_decoding_keeps_min_side(tmp_path):
    p = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1600, 3), np.uint8)).save(p)
    im = open_image(p, min_side=224)
    assert min(im.size) >= 224 and im.size[0] < 1600


def _folders(root, n_ids=8, per=4):
    rng = np.random.default_rng(0)
    for i in range(n_ids):
        d = root / f"animal{i}"
        d.mkdir(parents=True)
        for j in range(per):
            side = "left" if j % 2 else "right"
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(d / f"{j}_{side}photo.jpg")


def test_import_folders_open_set(tmp_path):
    _folders(tmp_path / "src")
    out, counts = import_folders(tmp_path / "src", tmp_path / "comp", "Nyala", unknown_fraction=0.25, seed=3)
    df = read_competition(out)
    assert counts == {"dataset": "Nyala", "identities": 8, "new_identities": 2, "images": 32,
                      "database": int((df["split"] == "database").sum()), "query": int((df["split"] == "query").sum()),
                      "skipped": 0}
    sol = read_csv_str(out / "solution.csv")
    q = df[df["split"] == "query"]
    assert list(sol["image_id"]) == list(q["image_id"])
    unknown = set(sol.loc[sol["new_identity"] == "True", "identity"])
    assert len(unknown) == 2
    assert not unknown & set(df.loc[df["split"] == "database", "identity"])
    assert set(df["orientation"]) == {"left", "right"}
    sample = read_csv_str(out / "sample_submission.csv")
    assert list(sample["image_id"]) == list(q["image_id"])
    with pytest.raises(DataError, match="not empty"):
        import_folders(tmp_path / "src", out, "Nyala")


def test_import_folders_2026(tmp_path):
    _folders(tmp_path / "src")
    out, _ = import_folders(tmp_path / "src", tmp_path / "comp", "Nyala", layout="2026")
    df = read_competition(out)
    assert df.attrs["layout"] == "2026"
    train = df[df["split"] == "train"]
    assert all(p.startswith(f"images/Nyala/train/{i}/") for p, i in zip(train["path"], train["identity"]))
    assert list(read_csv_str(out / "sample_submission.csv").columns) == ["image_id", "cluster"]


def test_import_rejects_unreadable(tmp_path):
    _folders(tmp_path / "src", 3, 2)
    _truncate(next((tmp_path / "src" / "animal1").iterdir()))
    with pytest.raises(DataError, match="animal1"):
        import_folders(tmp_path / "src", tmp_path / "comp", "X")
    assert not (tmp_path / "comp").exists()
