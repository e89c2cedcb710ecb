"""Submission writing: order, completeness, atomicity."""

from __future__ import annotations

import pandas as pd
import pytest

from kit.data import read_competition
from kit.errors import SubmissionError
from kit.io import read_csv_str
from kit.submit import build_submission, write_submission


def _pred(meta):
    q = meta[meta["split"] == "query"]
    return pd.DataFrame({"image_id": q["image_id"], "identity": "new_individual"})


def test_written_in_sample_order(tiny_2025, tmp_path):
    meta = read_competition(tiny_2025)
    pred = _pred(meta).iloc[::-1]  # predictions arrive in any order
    out = write_submission(pred, meta, tmp_path / "s.csv")
    sample = read_csv_str(tiny_2025 / "sample_submission.csv")
    assert list(out["image_id"]) == list(sample["image_id"])
    assert list(read_csv_str(tmp_path / "s.csv")["image_id"]) == list(sample["image_id"])


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p.iloc[1:], r"no prediction for 1 image"),
    (lambda p: pd.concat([p, p.iloc[:1]]), r"twice"),
    (lambda p: pd.concat([p, pd.DataFrame({"image_id": ["zzz"], "identity": ["a"]})]), r"not to be submitted"),
    (lambda p: p.assign(identity=[""] + ["x"] * (len(p) - 1)), r"empty identity"),
])
def test_bad_predictions_write_nothing(tiny_2025, tmp_path, mutate, message):
    meta = read_competition(tiny_2025)
    target = tmp_path / "s.csv"
    target.write_text("previous,file\n")
    with pytest.raises(SubmissionError, match=message):
        write_submission(mutate(_pred(meta)), meta, target)
    assert target.read_text() == "previous,file\n"  # untouched


def test_build_submission_2026_columns():
    out = build_submission(pd.DataFrame({"image_id": ["b", "a"], "cluster": ["cluster_X_1", "cluster_X_2"]}),
                           ["a", "b"], layout="2026")
    assert list(out.columns) == ["image_id", "cluster"] and list(out["cluster"]) == ["cluster_X_2", "cluster_X_1"]
