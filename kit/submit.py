"""Submission files: validated before they are written, written atomically, never partial.

2025 (identification): ``image_id,identity`` in ``sample_submission.csv`` order, one row per query,
``identity`` a database identity or ``new_individual``.
2026 (clustering): ``image_id,cluster`` in metadata order, one row per test image, ``cluster`` beginning
with ``cluster_<dataset>_``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .errors import DataError, SubmissionError
from .io import read_csv_str, write_csv
from .schema import LAYOUT_SPLITS, LAYOUT_TASK, SUBMISSION_COLUMNS

SAMPLE = "sample_submission.csv"  # beside metadata.csv: the rows, and their order, a submission must have


def read_sample(root: str | Path) -> pd.DataFrame | None:
    """``root/sample_submission.csv`` (every column str), or None when the competition has none.

    Raises DataError when it is empty, not a CSV or lacks image_id: ``kit submit`` reads it before any work, so
    a broken sample stops the run at once instead of after the whole pipeline.
    """
    path = Path(root) / SAMPLE
    if not path.is_file():
        return None
    fix = ("copy it again from the competition's data, or delete it (the order then comes from metadata.csv's "
           "unlabelled rows)")
    try:
        sample = read_csv_str(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty ({path.stat().st_size} bytes); {fix}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc}); {fix}") from None
    if "image_id" not in sample.columns:
        raise DataError(f"{path} has no image_id column (found {list(sample.columns)}); {fix}")
    return sample


def expected_order(meta: pd.DataFrame, sample: pd.DataFrame | None = None) -> list[str]:
    """The image_ids a submission must list, in order: the sample submission's, else the metadata's
    unlabelled rows. A sample that disagrees with the metadata is an error, not a guess."""
    unlabelled = LAYOUT_SPLITS[meta.attrs.get("layout", "2025")][1]
    ids = meta.loc[meta["split"] == unlabelled, "image_id"].tolist()
    if sample is None:
        return ids
    order = sample["image_id"].tolist()
    if sorted(order) != sorted(ids):
        extra = sorted(set(order) - set(ids))[:5]
        lacking = sorted(set(ids) - set(order))[:5]
        raise SubmissionError(
            f"sample_submission.csv lists other image_ids than metadata.csv's {unlabelled} rows "
            f"(only in sample: {extra}, only in metadata: {lacking}); use the files of one competition"
        )
    return order


def require_rows(meta: pd.DataFrame, order: list[str], data: str | Path) -> None:
    """DataError when ``order`` (``expected_order``) is empty: a database-only folder has nothing to predict. Said
    before any work, where the pipeline would otherwise run minutes and then fail on zero queries."""
    if order:
        return
    labelled, unlabelled = LAYOUT_SPLITS[meta.attrs.get("layout", "2025")]
    root = Path(meta.attrs.get("root", data))
    sample = " and sample_submission.csv lists none" if (root / SAMPLE).is_file() else ""
    raise DataError(f"{root / 'metadata.csv'} has no {unlabelled} rows{sample}: there is nothing to predict, so "
                    f"nothing was run. Add the photos to identify as rows with split={unlabelled} (identity empty), or "
                    f"score the pipeline on the {labelled} photos alone with `kit validate {data}`")


def build_submission(pred: pd.DataFrame, order: list[str], layout: str = "2025") -> pd.DataFrame:
    """Put predictions into submission order and check them.

    ``pred``: one row per image with the task's columns (``image_id`` + ``identity`` or ``cluster``).
    Raises SubmissionError when a row is missing, duplicated, extra, or has an empty label.
    """
    cols = SUBMISSION_COLUMNS[LAYOUT_TASK[layout]]
    missing_cols = [c for c in cols if c not in pred.columns]
    if missing_cols:
        raise SubmissionError(f"predictions lack column(s) {missing_cols}; need {list(cols)}")
    pred = pred[list(cols)].astype(str)
    dup = pred["image_id"][pred["image_id"].duplicated()]
    if len(dup):
        raise SubmissionError(f"predictions list image_id {dup.iloc[0]!r} twice; one row per image")
    by_id = pred.set_index("image_id")[cols[1]]
    lacking = [i for i in order if i not in by_id.index]
    if lacking:
        raise SubmissionError(
            f"no prediction for {len(lacking)} image(s), first {lacking[0]!r}: every query needs a row"
        )
    extra = sorted(set(by_id.index) - set(order))
    if extra:
        raise SubmissionError(f"predictions for {len(extra)} image(s) not to be submitted, first {extra[0]!r}")
    out = pd.DataFrame({"image_id": order, cols[1]: by_id.loc[order].to_numpy()})
    empty = out[cols[1]].str.strip() == ""
    if empty.any():
        raise SubmissionError(f"image_id {out['image_id'][empty].iloc[0]!r} has an empty {cols[1]}")
    return out


def write_submission(pred: pd.DataFrame, meta: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """Validate and atomically write a submission for the competition ``meta`` (from read_competition)."""
    layout = meta.attrs.get("layout", "2025")
    sample = read_sample(meta.attrs.get("root", "."))
    out = build_submission(pred, expected_order(meta, sample), layout)
    write_csv(out, path)
    return out
