"""Competition metrics (AnimalCLEF 2025 BAKS/BAUS, AnimalCLEF 2026 ARI) and retrieval metrics (Rank-k, mAP).

The two competition scorers reproduce the Kaggle metrics, including their format checks: a malformed
submission raises `SubmissionError` (Kaggle's ParticipantVisibleError) whose message starts with the Kaggle
wording and then adds the first offending row and the fix. A malformed solution raises `DataError`.
Files (`score_files`) are checked as Kaggle reads them, pandas guessing each column's type: image_id "1" is
"000001" and "10.0" is "10"; an identity column of only numbers is not text; an empty identity is accepted and
scores as wrong. Scoring itself compares the exact text.

Rows are named "row i (line i+2 of the CSV)": i is the 0-based data row, the CSV line counts the header.

2025 (identification), per dataset:
    BAKS = mean over known identities of the share of their queries predicted exactly right
    BAUS = mean over unknown identities (new_identity True) of the share predicted "new_individual"
    score = sqrt(BAKS * BAUS), an undefined (NaN) BAKS or BAUS counting as 0
  final score = mean over datasets.
2026 (clustering), per dataset: adjusted Rand index of true identities vs predicted clusters;
  final score = mean over datasets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype
from sklearn.metrics import adjusted_rand_score

from .errors import DataError, SubmissionError
from .schema import CLUSTERING, IDENTIFICATION, NEW_INDIVIDUAL, cluster_label
from .schema import SOLUTION_COLUMNS as _SOLUTION_COLUMNS
from .schema import SUBMISSION_COLUMNS as _SUBMISSION_COLUMNS

_TITLES = {
    IDENTIFICATION: "AnimalCLEF 2025 identification: per dataset sqrt(BAKS * BAUS), mean over datasets",
    CLUSTERING: "AnimalCLEF 2026 clustering: per dataset adjusted Rand index, mean over datasets",
}


def _row(i: int) -> str:
    return f"row {i} (line {i + 2} of the CSV)"


def _show(value: object) -> str:
    # repr of the plain Python value: 7, not np.int64(7)
    return repr(value.item() if isinstance(value, np.generic) else value)


# ---------------------------------------------------------------------------------------------------------
# 2025: BAKS / BAUS


def _per_identity_mean(hit: np.ndarray, identity: np.ndarray) -> float:
    """Mean over identities of the mean of `hit` within each identity: the balancing step."""
    if len(identity) == 0:
        return float("nan")
    per_identity = pd.Series(hit, dtype=float).groupby(pd.Series(identity, dtype=object), sort=False).mean()
    return float(per_identity.mean())


def _label_arrays(y_true: Sequence, y_pred: Sequence) -> tuple[np.ndarray, np.ndarray]:
    # object dtype: numpy would otherwise coerce labels like "123" and 123 to one type and compare them equal
    y_true = np.asarray(y_true, dtype=object)
    y_pred = np.asarray(y_pred, dtype=object)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must be 1-D and of equal length, got {y_true.shape} and {y_pred.shape}")
    return y_true, y_pred


def baks(y_true: Sequence, y_pred: Sequence, unknown_identities: Iterable) -> float:
    """Balanced accuracy on known samples.

    y_true: [Q] true identities (str); y_pred: [Q] predicted identities (str, may be "new_individual");
    unknown_identities: identities that are not in the database (their queries are ignored here).
    Returns the mean over known identities of the share of that identity's queries predicted exactly right,
    or NaN when there is no known query.
    """
    y_true, y_pred = _label_arrays(y_true, y_pred)
    known = ~pd.Series(y_true, dtype=object).isin(set(unknown_identities)).to_numpy()
    return _per_identity_mean(y_pred[known] == y_true[known], y_true[known])


def baus(y_true: Sequence, y_pred: Sequence, unknown_identities: Iterable, new_class: str = NEW_INDIVIDUAL) -> float:
    """Balanced accuracy on unknown samples.

    y_true: [Q] true identities (str); y_pred: [Q] predicted identities (str);
    unknown_identities: identities that are not in the database; new_class: the "unknown" label.
    Returns the mean over unknown identities of the share of that identity's queries predicted `new_class`,
    or NaN when there is no unknown query.
    """
    y_true, y_pred = _label_arrays(y_true, y_pred)
    unknown = pd.Series(y_true, dtype=object).isin(set(unknown_identities)).to_numpy()
    return _per_identity_mean(y_pred[unknown] == new_class, y_true[unknown])


# ---------------------------------------------------------------------------------------------------------
# Format checks shared by both tasks


def _check_solution(solution: pd.DataFrame, task: str) -> pd.DataFrame:
    for column in _SOLUTION_COLUMNS[task]:
        if column not in solution.columns:
            raise DataError(
                f"The solution must have column {column}. Found columns: {list(solution.columns)}. "
                f"Fix: a {'2025' if task == IDENTIFICATION else '2026'} solution.csv has the header "
                f"{','.join(_SOLUTION_COLUMNS[task])}."
            )
    solution = solution.reset_index(drop=True)
    if len(solution) == 0:
        raise DataError("The solution has no rows. Fix: score against a solution.csv with one row per test image.")
    for column in ("image_id", "identity", "dataset"):
        missing = np.flatnonzero(solution[column].isna().to_numpy() | (solution[column] == "").to_numpy())
        if len(missing):
            raise DataError(
                f"The solution column {column} is empty at {_row(int(missing[0]))}. "
                "Fix: every solution row needs an image_id, an identity and a dataset."
            )
    if task == IDENTIFICATION:
        flags = solution["new_identity"]
        if not (is_bool_dtype(flags) or all(isinstance(v, (bool, np.bool_)) for v in flags)):
            bad = next(i for i, v in enumerate(flags) if not isinstance(v, (bool, np.bool_)))
            raise DataError(
                f"The solution column new_identity must be boolean; {_row(bad)} holds {_show(flags.iloc[bad])}. "
                "Fix: write True or False (score_files parses them from the CSV)."
            )
        solution = solution.assign(new_identity=flags.astype(bool))
    return solution


def _id_diff(solution: pd.DataFrame, submission: pd.DataFrame, typed: tuple[pd.DataFrame, pd.DataFrame],
             shown: int = 5) -> str:
    """"; missing image_id '3', '7'; extra image_id '11'" for a submission of the wrong length: compared as Kaggle
    reads them (``typed``: "1" is "000001"), shown as written."""
    want, have = (t["image_id"].to_numpy(dtype=object) for t in typed)
    parts = []
    for what, text, values, other in (("missing", solution["image_id"], want, set(have)),
                                      ("extra", submission["image_id"], have, set(want))):
        rows = [i for i, v in enumerate(values) if v not in other]
        if rows:
            listed = ", ".join(repr(str(text.iloc[i])) for i in rows[:shown])
            parts.append(f"{what} image_id {listed}" + (f" ({len(rows)} in all)" if len(rows) > shown else ""))
    twice = pd.Series(have).duplicated().to_numpy()
    if twice.any():
        parts.append(f"listed twice: image_id {', '.join(repr(str(v)) for v in submission['image_id'][twice][:shown])}")
    return "; " + "; ".join(parts)


def _check_submission(submission: pd.DataFrame, solution: pd.DataFrame, task: str,
                      as_read: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Kaggle's format checks of a submission, with the first offending row and the fix.

    ``as_read``: (solution, submission) as Kaggle reads the two CSV files, pandas guessing each column's type
    (``_read_csv(..., as_kaggle=True)``): image_ids are compared as those values ("000001", "1" and "1.0" are the
    number 1), and a label column of only numbers is not text. None: the frames' own values. An empty or missing
    identity is accepted and scores as wrong (so does Kaggle); an empty cluster is not.
    """
    label = _SUBMISSION_COLUMNS[task][1]
    header = ",".join(_SUBMISSION_COLUMNS[task])
    for column in _SUBMISSION_COLUMNS[task]:
        if column not in submission.columns:
            raise SubmissionError(
                f"The submission must have column {column}. Found columns: {list(submission.columns)}. "
                f"Fix: the header line must be {header}."
            )
    submission = submission.reset_index(drop=True)
    typed_solution, typed = as_read if as_read is not None else (solution, submission)
    if len(submission) != len(solution):
        raise SubmissionError(
            f"The submission length must be {len(solution)}. Found {len(submission)} rows"
            f"{_id_diff(solution, submission, (typed_solution, typed))}. "
            "Fix: write exactly one row per test image, as in sample_submission.csv."
        )
    expected = typed_solution["image_id"].to_numpy(dtype=object)
    found = typed["image_id"].to_numpy(dtype=object)
    mismatch = np.flatnonzero(expected != found)  # element by element, as Python compares: 1 == 1.0, NaN != NaN
    if len(mismatch):
        i = int(mismatch[0])
        raise SubmissionError(
            "Submission column image_id is wrong. Verify that it is in the same order as in "
            f"sample_submission.csv. First mismatch at {_row(i)}: expected {_show(solution['image_id'].iloc[i])}, "
            f"found {_show(submission['image_id'].iloc[i])}. "
            "Fix: keep the rows, and their order, of sample_submission.csv."
        )
    values = typed[label].reset_index(drop=True)
    empty = np.flatnonzero(values.isna().to_numpy() | (values.to_numpy(dtype=object) == ""))
    if len(empty) and task == CLUSTERING:
        i = int(empty[0])
        raise SubmissionError(
            f"Submission column {label} is empty at {_row(i)} (image_id {_show(submission['image_id'].iloc[i])}). "
            "Fix: write a cluster name for every image."
        )
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str) and not pd.isna(v)), None)
    if bad is not None or len(empty) == len(values):
        where = f"{_row(bad)} holds {_show(values.iloc[bad])}" if bad is not None else "every value is empty"
        fix = (f"a CSV column that holds only numbers is read as numbers, so the {label} values need names that are "
               f"not numbers (as the competition's are)" if as_read is not None and bad is not None else
               f"write {label} values as text (in pandas: submission['{label}'].astype(str))")
        raise SubmissionError(f"Submission column {label} must be a string; {where}. Fix: {fix}.")
    return submission


# ---------------------------------------------------------------------------------------------------------
# Competition scorers


def _zero_if_nan(x: float) -> float:
    # Kaggle: a dataset without known (or unknown) queries scores 0, not NaN, so it still drags the mean
    return 0.0 if math.isnan(x) else x


def score_2025(solution: pd.DataFrame, submission: pd.DataFrame,
               as_read: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> tuple[float, pd.DataFrame]:
    """AnimalCLEF 2025 score.

    solution: columns image_id, identity, dataset (str), new_identity (bool), one row per query.
    submission: columns image_id, identity (str; an empty or missing one scores as wrong), rows in the solution's
    order. as_read: the two files as Kaggle reads them, for its format checks (``_check_submission``).
    Returns (score, table): table has index dataset (sorted) and float columns BAKS, BAUS, score.
    BAKS / BAUS are NaN where a dataset has no known / no unknown query; `score` then counts them as 0,
    as Kaggle does. The unknown set is taken per dataset (Kaggle pools it over datasets, which is the same
    whenever identity names are unique across datasets, as the competition's dataset prefixes make them).
    """
    solution = _check_solution(solution, IDENTIFICATION)
    submission = _check_submission(submission, solution, IDENTIFICATION, as_read)
    predictions = submission["identity"].to_numpy(dtype=object)
    rows = {}
    for dataset, part in solution.groupby("dataset", sort=True):
        unknown = set(part.loc[part["new_identity"], "identity"])
        y_true = part["identity"].to_numpy(dtype=object)
        y_pred = predictions[part.index.to_numpy()]
        known_acc = baks(y_true, y_pred, unknown)
        unknown_acc = baus(y_true, y_pred, unknown)
        rows[dataset] = {
            "BAKS": known_acc,
            "BAUS": unknown_acc,
            "score": math.sqrt(_zero_if_nan(known_acc) * _zero_if_nan(unknown_acc)),
        }
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["BAKS", "BAUS", "score"])
    table.index.name = "dataset"
    return float(table["score"].mean()), table


def score_2026(solution: pd.DataFrame, submission: pd.DataFrame,
               as_read: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> tuple[float, pd.DataFrame]:
    """AnimalCLEF 2026 score.

    solution: columns image_id, identity, dataset (str), one row per test image.
    submission: columns image_id, cluster (str, each starting with f"cluster_{dataset}_"), solution order.
    as_read: the two files as Kaggle reads them, for the format checks (``_check_submission``).
    Returns (score, table): table has index dataset (sorted) and columns ARI (float, sklearn's
    adjusted_rand_score of true identities vs clusters), n_clusters (predicted), n_identities (true),
    n_images (int).
    """
    solution = _check_solution(solution, CLUSTERING)
    submission = _check_submission(submission, solution, CLUSTERING, as_read)
    clusters = submission["cluster"].to_numpy(dtype=object)
    datasets = solution["dataset"].to_numpy(dtype=object)
    for i, (cluster, dataset) in enumerate(zip(clusters, datasets)):
        prefix = cluster_label(dataset, "")
        if not cluster.startswith(prefix):
            raise SubmissionError(
                f"Submission column cluster must start with cluster_<dataset>_ for the image's dataset. "
                f"At {_row(i)}, image_id {_show(solution['image_id'].iloc[i])} of dataset {_show(dataset)} has cluster "
                f"{cluster!r}. Fix: name that dataset's clusters {prefix}0, {prefix}1, ..."
            )
    rows = {}
    for dataset, part in solution.groupby("dataset", sort=True):
        y_pred = clusters[part.index.to_numpy()]
        y_true = part["identity"].to_numpy(dtype=object)
        rows[dataset] = {
            "ARI": float(adjusted_rand_score(y_true, y_pred)),
            "n_clusters": len(set(y_pred)),
            "n_identities": len(set(y_true)),
            "n_images": len(part),
        }
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["ARI", "n_clusters", "n_identities", "n_images"])
    table.index.name = "dataset"
    return float(table["ARI"].mean()), table


def detect_task(submission_columns: Iterable[str]) -> str:
    """Tell the task from a submission's header: "identification" (image_id,identity) or
    "clustering" (image_id,cluster). Raises SubmissionError when it is neither, or both."""
    columns = list(submission_columns)
    matches = [task for task, needed in _SUBMISSION_COLUMNS.items() if set(needed) <= set(columns)]
    if len(matches) == 1:
        return matches[0]
    problem = "both identity and cluster columns" if matches else f"columns {columns}"
    raise SubmissionError(
        f"Cannot tell the task from the submission's {problem}. Fix: the header line must be "
        "image_id,identity (2025 identification) or image_id,cluster (2026 clustering)."
    )


def _read_csv(path: str | Path, error: type[Exception], what: str, as_kaggle: bool = False) -> pd.DataFrame:
    """The CSV at ``path`` with every column as exact text: identities such as "123", "0042" or "NA" stay as is.
    ``as_kaggle``: as Kaggle's metric reads it instead, pandas guessing each column's type ("000001" -> 1, an
    empty cell -> NaN)."""
    kw = {} if as_kaggle else {"dtype": str, "keep_default_na": False}
    try:
        return pd.read_csv(path, encoding="utf-8-sig", **kw)
    except FileNotFoundError:
        raise error(f"{path}: no such file. Fix: pass the path of the {what} CSV.") from None
    except pd.errors.EmptyDataError:
        raise error(f"{path}: the file is empty. Fix: the {what} CSV needs a header line and rows.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise error(f"{path}: not a readable CSV ({err}). Fix: write a comma-separated UTF-8 file.") from None


def _parse_new_identity(solution: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    lookup = {"true": True, "false": False, "1": True, "0": False}
    text = solution["new_identity"].str.strip().str.lower()
    bad = np.flatnonzero(~text.isin(list(lookup)).to_numpy())
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"{path}: column new_identity must be True or False; {_row(i)} holds "
            f"{solution['new_identity'].iloc[i]!r}. Fix: write True or False."
        )
    return solution.assign(new_identity=text.map(lookup).astype(bool))


def score_files(solution_path: str | Path, submission_path: str | Path) -> tuple[str, float, pd.DataFrame]:
    """Score a submission CSV against a solution CSV; the task comes from the submission's header.

    Every column is read as exact text (no "123" -> 123, no "NA" -> NaN) for scoring; new_identity is parsed to
    bool. The format checks look at the files as Kaggle reads them too, so a file is accepted or rejected as
    Kaggle would: image_id "1" matches "000001" and "10.0" matches "10"; an all-number identity column is
    rejected; an empty identity scores as wrong.
    Returns (task, score, table) as in score_2025 / score_2026. Errors name the offending file.
    """
    submission = _read_csv(submission_path, SubmissionError, "submission")
    task = detect_task(submission.columns)
    solution = _read_csv(solution_path, DataError, "solution")
    if task == IDENTIFICATION and "new_identity" in solution.columns:
        solution = _parse_new_identity(solution, solution_path)
    elif task == IDENTIFICATION:
        raise DataError(
            f"{solution_path}: the submission {submission_path} is a 2025 identification file "
            "(image_id,identity) but this solution has no new_identity column. "
            "Fix: score it against the 2025 solution.csv (image_id,identity,dataset,new_identity)."
        )
    scorer = score_2025 if task == IDENTIFICATION else score_2026
    as_read = (_read_csv(solution_path, DataError, "solution", as_kaggle=True),
               _read_csv(submission_path, SubmissionError, "submission", as_kaggle=True))
    try:
        score, table = scorer(solution, submission, as_read)
    except SubmissionError as err:
        raise SubmissionError(f"{submission_path}: {err}") from err
    except DataError as err:
        raise DataError(f"{solution_path}: {err}") from err
    return task, score, table


def _format_cell(value: object) -> str:
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(value)
    value = float(value)
    return "n/a" if math.isnan(value) else f"{value:.6f}"


def format_table(task: str, table: pd.DataFrame, score: float) -> str:
    """Printable text: a title, one row per dataset (NaN shown as n/a), and last the line f"score {score:.6f}"."""
    header = [table.index.name or "dataset", *map(str, table.columns)]
    rows = zip(table.index, table.itertuples(index=False))
    body = [[str(index), *map(_format_cell, values)] for index, values in rows]
    widths = [max(len(row[j]) for row in [header, *body]) for j in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(cell.rjust(width) for cell, width in zip(cells[1:], widths[1:]))])

    return "\n".join([_TITLES.get(task, task), line(header), *map(line, body), f"score {score:.6f}"])


# ---------------------------------------------------------------------------------------------------------
# Retrieval metrics


def rank_k(
    ranked_labels: np.ndarray,
    query_labels: Sequence,
    ks: Sequence[int] = (1, 5, 20),
    *,
    gallery_labels: Sequence | None = None,
) -> dict[str, float]:
    """Rank-k accuracy (CMC at k).

    ranked_labels: [Q, K] object/str, the gallery labels in ranked order for each query (duplicates allowed,
        e.g. one column per gallery image); query_labels: [Q] str; ks: the k values to report.
    A query is a hit at k if its label appears among its first k ranked labels. A k larger than K uses all
    K columns, which is exact when the ranking covers the whole gallery.
    gallery_labels: [N] str, optional. When given, queries whose label is absent from it are excluded (they
    cannot be retrieved; they are open-set queries, scored by the open-set metrics instead). When omitted,
    every query counts, and a query whose label is not in the gallery is a miss at every k.
    Returns {"R-1": float, ...}; NaN when no query is left.
    """
    ranked = np.asarray(ranked_labels, dtype=object)
    queries = np.asarray(query_labels, dtype=object)
    if ranked.ndim != 2 or queries.shape != (ranked.shape[0],):
        raise ValueError(f"ranked_labels must be [Q, K] and query_labels [Q], got {ranked.shape} and {queries.shape}")
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {list(ks)}")
    if gallery_labels is not None:
        keep = pd.Series(queries, dtype=object).isin(set(np.asarray(gallery_labels, dtype=object))).to_numpy()
        ranked, queries = ranked[keep], queries[keep]
    if len(queries) == 0:
        return {f"R-{k}": float("nan") for k in ks}
    match = ranked == queries[:, None]  # [Q, K] bool
    first_hit = np.where(match.any(axis=1), match.argmax(axis=1), np.iinfo(np.int64).max)  # [Q] 0-based rank
    return {f"R-{k}": float(np.mean(first_hit < int(k))) for k in ks}


def mean_average_precision(scores: np.ndarray, gallery_labels: Sequence, query_labels: Sequence) -> float:
    """Mean average precision over the full ranking.

    scores: [Q, N] float32, higher = more similar; gallery_labels: [N] str; query_labels: [Q] str.
    AP of a query = mean, over its positives (gallery items with its label), of the precision at the
    positive's rank. Queries with no positive in the gallery are excluded; NaN when none is left.
    Ties: items with equal scores form one block that is ranked at once, so a positive in a block gets the
    precision measured after the whole block. This does not depend on gallery order and equals
    sklearn.metrics.average_precision_score per query.
    """
    scores = np.asarray(scores, dtype=np.float64)
    gallery = np.asarray(gallery_labels, dtype=object)
    queries = np.asarray(query_labels, dtype=object)
    if scores.ndim != 2 or scores.shape != (len(queries), len(gallery)):
        raise ValueError(f"scores must be [Q, N] = [{len(queries)}, {len(gallery)}], got {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN: a ranking is undefined")
    average_precisions = []
    for row, label in zip(scores, queries):
        positive = gallery == label  # [N] bool
        if not positive.any():
            continue
        order = np.argsort(-row, kind="stable")
        descending = -row[order]  # ascending, so searchsorted finds each tie block's end
        block_end = np.searchsorted(descending, descending, side="right") - 1  # [N] last index of the block
        hits = np.cumsum(positive[order])
        precision = hits[block_end] / (block_end + 1)
        average_precisions.append(precision[positive[order]].mean())
    return float(np.mean(average_precisions)) if average_precisions else float("nan")
