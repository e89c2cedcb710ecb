"""What an AnimalCLEF competition folder and its submissions look like: names, columns, labels, flanks.

One place for the format's facts, so the reader, the writer, the metric and the synthetic generator cannot drift
apart. Plain constants and two small functions; no kit imports.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

COLUMNS = ["image_id", "identity", "path", "date", "orientation", "species", "split", "dataset"]  # metadata.csv
LAYOUT_SPLITS = {"2025": ("database", "query"), "2026": ("train", "test")}  # layout: (labelled, unlabelled)
IDENTIFICATION = "identification"  # the 2025 task: name each query's individual or say NEW_INDIVIDUAL
CLUSTERING = "clustering"  # the 2026 task: cluster the test images into individuals
LAYOUT_TASK = {"2025": IDENTIFICATION, "2026": CLUSTERING}
NEW_INDIVIDUAL = "new_individual"  # the 2025 label for "not in the database"
SUBMISSION_COLUMNS = {IDENTIFICATION: ("image_id", "identity"), CLUSTERING: ("image_id", "cluster")}
SOLUTION_COLUMNS = {IDENTIFICATION: ("image_id", "identity", "dataset", "new_identity"),
                    CLUSTERING: ("image_id", "identity", "dataset")}
FLANK_NAMES = ("", "left", "right")  # flank codes 0 (other or unknown), 1, 2


def cluster_label(dataset: str, k) -> str:
    """The 2026 submission's name of cluster ``k`` of ``dataset``: ``cluster_<dataset>_<k>``."""
    return f"cluster_{dataset}_{k}"


def flank(orientation: Iterable) -> np.ndarray:
    """[M] int8 flank codes: 1 where the text holds "left", 2 where it holds "right", else 0 (top, front, missing).

    Works on orientation values and on file names alike (``12_leftphoto.jpg``); None and NaN are 0.
    """
    out = []
    for v in orientation:
        s = str(v).lower() if v is not None and v == v else ""
        out.append(1 if "left" in s else 2 if "right" in s else 0)
    return np.asarray(out, np.int8)
