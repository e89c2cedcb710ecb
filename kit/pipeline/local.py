"""Local matching wired into both tasks: which matchers run, on how many pairs (the plan), and their pair scores.

kit.rerank reads only its own ``rerank`` section; what else it needs (the shortlist, the cache folder, the photos'
paths and flanks) is handed over here. The plan is made once per competition, from the whole folder's sizes and
a short timed probe of each matcher on this machine (cached, so validate and submit plan alike), and printed
before any matching: matchers, pairs, estimated time. ``rerank.enabled: auto`` matches whenever the estimate fits
``rerank.budget_s``; over budget the shortlist shrinks first, then the slowest matcher goes; a plan that cannot fit
is said, never dropped silently.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..cache import cache_root, spec_hash
from ..cluster import LocalFn
from ..data import labelled_mask
from ..io import write_json
from .pairs import Candidates, add_local

LADDER = (200, 100, 50, 25)  # shortlist lengths a plan falls back to, in order, when matching all is over budget
SYMMETRIC_SHARE = 0.6  # database x database pairs left after each unordered pair is matched once (measured ~0.55)


@dataclass
class Plan:
    """What local matching will do for a competition: ``scorers`` (kit.rerank.scorers; empty = off), how many of
    each query's candidates it matches (``topk``, the first by mean cosine), and the estimate it was chosen by."""

    scorers: list = field(default_factory=list)
    topk: int = 0
    pairs: int = 0
    seconds: float = 0.0
    why: str = ""

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.scorers]


def extractor_names(rc: dict, on_gpu: bool) -> list[str]:
    """rerank.extractor as a list: ``auto`` is LightGlue (ALIKED) and RootSIFT on a GPU, RootSIFT on a CPU, where
    the kit's LightGlue matches about 2 pairs/s and RootSIFT a few hundred."""
    ex = rc["extractor"]
    if ex == "auto":
        return ["aliked-n16", "sift"] if on_gpu else ["sift"]
    return [ex] if isinstance(ex, str) else list(ex)


def _probe_image(path: Path) -> None:
    """A 512 x 384 photo-like card with corners and blobs, so every extractor finds its full keypoint budget."""
    from PIL import Image

    rng = np.random.default_rng(0)
    img = np.kron(rng.integers(0, 255, (48, 64, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    Image.fromarray(img).save(path, quality=90)


def probe(scorer, cache_dir: Path | None) -> dict:
    """Seconds per photo to extract and pairs per second to match, measured once on this machine (cached)."""
    import torch

    machine = f"{platform.node()}|{os.cpu_count()}|{torch.cuda.get_device_name() if torch.cuda.is_available() else ''}"
    key = spec_hash({"probe": scorer.cache_spec(), "machine": machine, "version": 1})
    path = None if cache_dir is None else Path(cache_dir) / "probe" / f"{key}.json"
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    with tempfile.TemporaryDirectory(prefix="kit-probe-") as tmp:
        img = Path(tmp) / "probe.jpg"
        _probe_image(img)
        scorer.extract([str(img)])  # the first extraction loads the network
        t = time.perf_counter()
        feats = scorer.extract([str(img)] * 2)
        extract_s = (time.perf_counter() - t) / 2
    rng = np.random.default_rng(0)
    n = 64 if scorer.family == "sift" else 4
    noisy = {k: np.repeat(v, n, 0) for k, v in feats.items()}
    d = noisy["descriptors"].astype(np.float32) + 0.05 * np.abs(rng.normal(size=noisy["descriptors"].shape))
    noisy["descriptors"] = (d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-6)).astype(np.float16)
    pairs = np.stack([np.zeros(n, np.int64), np.arange(n)], 1)
    scorer.score(noisy, noisy, pairs[:2])  # warm-up
    rates = []
    for _ in range(3 if scorer.family == "sift" else 1):  # the best of three: a busy moment is not this machine
        t = time.perf_counter()
        scorer.score(noisy, noisy, pairs)
        rates.append(n / max(time.perf_counter() - t, 1e-6))
    out = {"extract_s": extract_s, "pairs_per_s": max(rates), "machine": machine}
    if path is not None:
        write_json(out, path)
    return out


def _pairs_for(sizes: list[tuple[int, int]], k: int) -> int:
    """Pairs a shortlist of ``k`` costs: each query's k, and each database photo's k against the others."""
    return int(sum(q * min(k, n) + SYMMETRIC_SHARE * n * min(k, max(n - 1, 0)) for n, q in sizes))


def plan_matching(meta: pd.DataFrame, conf: dict, verbose: bool = True) -> Plan:
    """The plan for a competition (see the module docstring); ``meta`` is the whole folder."""
    rc, topk = conf["rerank"], conf["retrieve"]["topk"]
    if rc["enabled"] is False or float(rc["budget_s"]) <= 0:
        return Plan(topk=0, why="local matching off (rerank.enabled=false or rerank.budget_s=0)")
    from ..device import resolve
    from ..rerank import make_scorer, rerank_conf

    rc = rerank_conf(rc)
    names = extractor_names(rc, resolve(rc["device"]).type == "cuda")
    cache_dir = cache_root(conf["cache"])
    probed = [make_scorer(n, rc) for n in names]
    rates = {s.name: probe(s, cache_dir) for s in probed}
    scorers = list(probed)  # the ladder drops from this list; the over-budget fallback picks from all probed
    lab = labelled_mask(meta)
    sizes = [(int((lab & (meta["dataset"] == d)).sum()), int((~lab & (meta["dataset"] == d)).sum()))
             for d in sorted(meta["dataset"].unique())]
    photos = len(meta)
    largest = max(n for n, _ in sizes) if sizes else 0
    ladder = [k for k in (_as_k(topk, meta), *LADDER) if k <= _as_k(topk, meta)]
    budget = float(rc["budget_s"])
    while scorers:
        for k in dict.fromkeys(min(k, largest) for k in ladder):
            pairs = _pairs_for(sizes, k)
            secs = sum(photos * rates[s.name]["extract_s"] + pairs / rates[s.name]["pairs_per_s"] for s in scorers)
            if secs <= budget:
                why = (f"local matching: {', '.join(s.name for s in scorers)} on {pairs:,} pairs (shortlist {k}), "
                       f"about {secs / 60:.1f} min on {scorers[0].device_name} (budget {budget / 60:.0f} min; "
                       + "; ".join(f"{s.name} {rates[s.name]['pairs_per_s']:.0f} pairs/s, "
                                   f"{1 / max(rates[s.name]['extract_s'], 1e-6):.1f} photos/s" for s in scorers) + ")")
                plan = Plan(scorers, k, pairs, secs, why)
                if verbose:
                    print(why, flush=True)
                return plan
        slowest = min(scorers, key=lambda s: rates[s.name]["pairs_per_s"])
        if verbose:
            print(f"local matching: {slowest.name} does not fit rerank.budget_s={budget:.0f} even at shortlist "
                  f"{ladder[-1]}; dropping it", flush=True)
        scorers = [s for s in scorers if s is not slowest]
    k = min(ladder[-1], largest)
    if rc["enabled"] is True:  # asked for: run the cheapest plan anyway, and say it is over budget
        scorers = [max(probed, key=lambda s: rates[s.name]["pairs_per_s"])]
        pairs = _pairs_for(sizes, k)
        why = (f"local matching: {scorers[0].name} on {pairs:,} pairs (shortlist {k}) is over rerank.budget_s="
               f"{budget:.0f} but rerank.enabled=true asks for it")
        if verbose:
            print(why, flush=True)
        return Plan(scorers, k, pairs, 0.0, why)
    why = (f"local matching OFF: no matcher fits rerank.budget_s={budget:.0f} s on this machine; raise it, or set "
           "rerank.enabled=true to match anyway")
    if verbose:
        print(why, flush=True)
    return Plan([], 0, 0, 0.0, why)


def _as_k(topk, meta: pd.DataFrame) -> int:
    return len(meta) if topk == "all" else int(topk)


def score_candidates(plan: Plan, cand: Candidates, paths_q: list[str], paths_db: list[str], labels_db: np.ndarray,
                     conf: dict, topk: int, memo: dict | None = None) -> None:
    """Fill ``cand`` with every planned matcher's columns (``add_local``; ``labels_db [N]`` the database identities,
    for the identity-weighted score). Only each row's first ``topk`` candidates are matched; the rest, and with
    rerank.skip_opposite_flanks the opposite-flank pairs, keep their global evidence only. ``memo``: pair scores
    kept in memory across calls when the disk cache is off. The one place both tasks get local scores from."""
    from ..rerank import score_pairs

    done = cand.valid.copy()
    done[:, max(0, int(topk)):] = False
    if conf["rerank"]["skip_opposite_flanks"]:
        done &= ~(cand.cols["flank_opposite"] > 0)
    rows = np.broadcast_to(np.arange(len(done))[:, None], done.shape)[done]
    pairs = np.stack([rows, cand.index[done]], 1)
    cache_dir = cache_root(conf["cache"])
    for scorer in plan.scorers:
        scores = score_pairs(scorer, paths_q, paths_db, pairs, cache_dir, memo=None if cache_dir else memo)
        add_local(cand, scorer.name, scores, done, labels_db)


def cluster_local_fn(conf: dict, plan: Plan) -> LocalFn | None:
    """The 2026 clustering's local scores, from the identification's pair stage: each photo is a query against the
    others (``pairs.candidates``, shortlist of its ``cluster.rerank_topk`` nearest by mean cosine, each photo its own
    identity), matched by the planned matchers (``score_candidates``: the same cached pair scores, the same log1p
    columns; the first matcher alone unless ``cluster.local_columns=all``). Returns ``{column: [m, m] float32}``
    symmetrised by the max of both directions, NaN where a pair was not matched: ``local`` the first matcher's strict
    count (what the clustering reads by default) and, with ``cluster.local_columns=all``, ``local:<matcher>:<column>``
    for every matcher's every column. None when the plan matches nothing or ``cluster.rerank_topk`` is 0."""
    k = int(conf["cluster"]["rerank_topk"])
    if not plan.scorers or k <= 0:
        return None
    from .pairs import candidates, flanks

    every = conf["cluster"]["local_columns"] == "all"
    used = plan if every else replace(plan, scorers=plan.scorers[:1])  # strict reads the first matcher alone
    memo: dict = {}

    def local_fn(frame: pd.DataFrame, emb: np.ndarray) -> dict[str, np.ndarray]:
        m = len(frame)
        e = {"mean": np.asarray(emb, np.float32)}  # the descriptors side by side: their mean cosine, as a shortlist
        keys = np.arange(m)  # every photo its own identity: no per-identity cap, identity-weighted = per photo
        fl = flanks(frame)
        cand = candidates(e, e, keys, max(0, min(k, m - 1)), 0, True, fl, fl, ranks=False)
        paths = frame["filepath"].tolist()
        score_candidates(used, cand, paths, paths, keys, conf, k, memo)  # a single photo: no pair, every column
        first = f"{plan.scorers[0].name}:n_strict"
        names = [first] + ([n for n in cand.cols if n.split(":")[0] in used.names and n != first
                            and not n.endswith(":missing")] if every else [])
        rows = np.broadcast_to(np.arange(m)[:, None], cand.index.shape)
        out = {}
        for n in names:
            dense = np.full((m, m), np.nan, np.float32)
            done = cand.cols[f"{n.split(':')[0]}:missing"] == 0
            dense[rows[done], cand.index[done]] = cand.cols[n][done]
            out["local" if n == first else f"local:{n}"] = np.fmax(dense, dense.T)
        return out

    return local_fn
