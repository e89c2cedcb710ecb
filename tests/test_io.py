"""kit.io: atomic writes keep the old file on failure, files get the user's umask, JSON is strict."""

from __future__ import annotations

import json
import math
import os
import stat

import numpy as np
import pandas as pd
import pytest

from kit import io


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "x.csv"
    target.write_text("old\n")

    class Boom(pd.DataFrame):
        def to_csv(self, *a, **k):  # fails after the temporary file exists
            raise OSError("disk full")

    with pytest.raises(OSError):
        io.write_csv(Boom({"a": [1]}), target)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.csv"]  # the temporary is gone too


@pytest.mark.parametrize("mask, want", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, mask, want):
    old = os.umask(mask)
    try:
        paths = [io.write_text("x", tmp_path / "a.txt"), io.write_csv(pd.DataFrame({"a": [1]}), tmp_path / "b.csv"),
                 io.write_json({"a": 1}, tmp_path / "c.json")]
        src = tmp_path / "src.bin"
        src.write_bytes(b"123")
        os.chmod(src, 0o600)  # a private source: the copy still follows the umask, not the source's mode
        paths.append(io.copy_file(src, tmp_path / "d.bin"))
    finally:
        os.umask(old)
    assert [_mode(p) for p in paths] == [want] * 4
    assert (tmp_path / "d.bin").read_bytes() == b"123"


def test_json_is_strict_without_nan():
    value = {"a": float("nan"), "b": [np.float32(1.5), np.int64(3), float("inf")], 3: (np.bool_(True),),
             "arr": np.array([1.0, np.nan])}
    text = io.dumps_json(value)
    back = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert back == {"a": None, "b": [1.5, 3, None], "3": [True], "arr": [1.0, None]}
    assert "NaN" not in text and text.endswith("\n")


def test_read_csv_str_keeps_text(tmp_path):
    (tmp_path / "m.csv").write_text("identity,n\nNA,0123\n,7\n")
    df = io.read_csv_str(tmp_path / "m.csv")
    assert df["identity"].tolist() == ["NA", ""] and df["n"].tolist() == ["0123", "7"]
    assert not df.isna().any().any() and math.isfinite(len(df))


def test_write_problem_tries_for_real_and_leaves_nothing(tmp_path):
    from kit.io import write_problem

    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    before = sorted(tmp_path.rglob("*"))
    assert write_problem(tmp_path / "new" / "deeper" / "sub.csv") is None
    assert write_problem(tmp_path / "new" / "report", folder=True) is None
    assert sorted(tmp_path.rglob("*")) == before  # the folders it made to try are gone again
    assert "afile is a file" in write_problem(tmp_path / "afile" / "sub.csv")
    assert "afile is a file" in write_problem(tmp_path / "afile" / "x" / "rep", folder=True)
    assert "is a folder; give a file name" in write_problem(tmp_path / "adir")
    assert "exists and is a file, not a folder" in write_problem(tmp_path / "afile", folder=True)
    assert write_problem(tmp_path / "afile") is None  # an existing file is replaced atomically
    assert write_problem(tmp_path / "keep" / "cache", folder=True, keep_folders=True) is None
    assert (tmp_path / "keep" / "cache").is_dir()
