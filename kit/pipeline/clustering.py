"""The 2026 task wired: cluster each dataset's test photos (kit.cluster), for submission and for validation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import metrics
from ..cluster import ari, cluster_competition
from ..cluster.select import reads_head
from .local import Plan, cluster_local_fn
from .pairs import combine


def cluster_head_fn(conf: dict):
    """The clustering's metric-head trainer (kit.cluster's HeadFn): ``fit_head`` with the head section, cached, on
    a set of labelled photos with at least ``head.min_identities`` identities of two or more photos (2 with
    ``head.enabled=true``), else None. None (no head anywhere) with ``head.enabled=false``, or when neither
    ``cluster.head_space`` nor ``cluster.head_feature`` reads one."""
    hc, cc = conf["head"], conf["cluster"]
    if hc["enabled"] is False or not reads_head(cc):
        return None
    from ..cache import cache_root
    from ..head import fit_head

    cache_dir = cache_root(conf["cache"])
    need = int(hc["min_identities"]) if hc["enabled"] == "auto" else 2

    def head_fn(x: np.ndarray, labels: np.ndarray):
        counts = pd.Series(np.asarray(labels, dtype=str)).value_counts()
        if int((counts >= 2).sum()) < need:
            return None
        return fit_head(x, labels, hc, cache_dir)

    return head_fn


def submit_clustering(meta: pd.DataFrame, embs: dict, lab: np.ndarray, conf: dict, plan: Plan,
                      verbose: bool = True, links: pd.DataFrame | None = None) -> tuple[pd.DataFrame, dict]:
    """``image_id,cluster`` for every test row (metadata order), and per-dataset details.

    ``embs: {descriptor: [len(meta), D]}`` embeddings row-aligned with ``meta``; ``lab: [len(meta)] bool`` the
    train rows. ``links``: human must-/cannot-links between test photos (columns a, b, same) that the clustering
    honours (kit/cluster/constraints.py).
    """
    emb = combine(embs)
    labels, details = cluster_competition(meta[lab], emb[lab], meta[~lab], emb[~lab], conf["cluster"],
                                          cluster_local_fn(conf, plan), verbose, links=links,
                                          head_fn=cluster_head_fn(conf), pc=conf["pairmodel"])
    return pd.DataFrame({"image_id": meta.loc[~lab, "image_id"].to_numpy(), "cluster": labels}), details


def validate_clustering(db: pd.DataFrame, q: pd.DataFrame, solution: pd.DataFrame, embs: dict, conf: dict,
                        plan: Plan, verbose: bool = True) -> tuple[dict, dict]:
    """ARI of clustering the held-out queries ``q`` with ``db`` as the train identities: {dataset: metrics}.

    ``db``/``q`` (column ``_row`` indexes each ``embs`` array) and ``solution`` come from the validation split. With
    two or more datasets, ``ARI_fallback`` scores each one with the model fitted on the OTHER datasets only: the
    estimate for a dataset without training identities. The result also holds "mean" (ARI over datasets).
    """
    cc, emb, local_fn, head_fn = conf["cluster"], combine(embs), cluster_local_fn(conf, plan), cluster_head_fn(conf)
    labels, details = cluster_competition(db, emb[db["_row"]], q, emb[q["_row"]], cc, local_fn, verbose,
                                          head_fn=head_fn, pc=conf["pairmodel"])
    sub = pd.DataFrame({"image_id": q["image_id"].to_numpy(), "cluster": labels})
    _, table = metrics.score_2026(solution[["image_id", "identity", "dataset"]], sub)
    result: dict[str, dict] = {}
    for name, row in table.iterrows():
        det = details.get(name, {})
        result[name] = {"ARI": float(row["ARI"]), "n_clusters": int(row["n_clusters"]),
                        "n_identities": int(row["n_identities"]), "n_images": int(row["n_images"]),
                        "method": det.get("method"), "cut": det.get("cut"), "heldout_ARI": det.get("heldout_ARI")}
    names = sorted(table.index)
    if len(names) >= 2:  # leave-one-dataset-out: how the no-train fallback would do on each dataset
        for name in names:
            others = db[db["dataset"] != name]
            held = q["dataset"] == name
            qa = q[held]
            fl, _ = cluster_competition(others, emb[others["_row"]], qa, emb[qa["_row"]], cc, local_fn, False,
                                        head_fn=head_fn, pc=conf["pairmodel"])
            truth = solution.loc[held.to_numpy(), "identity"].to_numpy(dtype=object)
            result[name]["ARI_fallback"] = float(ari(truth, fl))
    result["mean"] = {"ARI": float(table["ARI"].mean())}
    return result, {"details": details, "solution": solution, "predictions": sub}
