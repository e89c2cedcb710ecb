"""How a run is judged and shown: retrieval and open-set metrics on the held-out identities (every epoch,
and bench/train.py), and the curves of a run's history.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .. import metrics, retrieve
from ..io import atomic_path
from ..openset import choose_threshold

METRICS = ("R-1", "R-5", "mAP", "score")  # the held-out metrics of history.csv, in column order


def heldout_metrics(emb: np.ndarray, val: pd.DataFrame) -> dict[str, float]:
    """Retrieval and open-set metrics of embeddings on a held-out open-set split: ``{name: value}`` for each
    name in METRICS, the mean over datasets (kit.openset.evaluate scores new-individual calls at a threshold).

    emb: [len(val), D] float32 L2-normalised, row i for ``val`` row i; val: columns identity, dataset,
    split (database/query), new_identity. R-1, R-5 and mAP are over known queries against the database;
    score is the best sqrt(BAKS*BAUS) over thresholds on the best-identity cosine (openset.choose_threshold;
    NaN without both known and unknown queries).
    """
    per: list[dict] = []
    for _, part in val.groupby("dataset", sort=True):
        rows = val.index.get_indexer(part.index)  # positions in val (and emb)
        is_db = (part["split"] == "database").to_numpy()
        if is_db.all() or not is_db.any():
            continue
        db_labels = part["identity"].to_numpy()[is_db]
        truth = part["identity"].to_numpy()[~is_db]
        new = part["new_identity"].to_numpy(bool)[~is_db]
        sims = retrieve.similarity(emb[rows[~is_db]], emb[rows[is_db]])  # [Q, N]
        entry = {k: float("nan") for k in METRICS}
        if (~new).any():
            entry.update(metrics.rank_k(retrieve.ranked_labels(sims[~new], db_labels, 5), truth[~new], ks=(1, 5)))
            entry["mAP"] = metrics.mean_average_precision(sims[~new], db_labels, truth[~new])
        if (~new).any() and new.any():
            identities, id_scores = retrieve.identity_scores(sims, db_labels)
            top = id_scores.argmax(axis=1)
            _, entry["score"] = choose_threshold(id_scores[np.arange(len(top)), top], identities[top] == truth,
                                                 new, truth)
        per.append(entry)
    return {k: _nanmean([e[k] for e in per]) for k in METRICS}


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def plot_history(history: list[dict], losses: list[float], steps_per_epoch: int, path: Path) -> None:
    """Training loss per step (and per-epoch mean) beside the validation metrics per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = pd.DataFrame(history)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    if losses:
        x = np.arange(1, len(losses) + 1) / steps_per_epoch
        a.plot(x, losses, color="tab:blue", alpha=0.3, lw=0.8, label="step")
        trained = h[h["epoch"] > 0]
        a.plot(trained["epoch"], trained["loss"], "o-", color="tab:blue", label="epoch mean")
    a.set(xlabel="epoch", ylabel="ArcFace loss", title="training loss")
    a.legend()
    for name in METRICS:
        if name in h and h[name].notna().any():
            b.plot(h["epoch"], h[name], "o-", label=name)
    b.set(xlabel="epoch (0 = backbone before training)", ylabel="held-out identities", title="validation",
          ylim=(0, 1.02))
    b.grid(alpha=0.3)
    if b.lines:
        b.legend()
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")  # the .tmp suffix says nothing about the format
    finally:
        plt.close(fig)
