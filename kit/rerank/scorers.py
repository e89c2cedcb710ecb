"""Pair scorers: one local matcher each (RootSIFT + mutual-NN/ratio, or a network extractor + LightGlue), behind
one interface, so that the pair cache, the pair model and the review pages do not care which one ran.

A scorer extracts padded, cached features per photo (``extract``) and scores directed pairs of rows
(``score``): ``{column: [P] float32}`` for the pair read from its first photo, and ``"<column>_rev"`` for the same
pair read from the second photo, so a database x database pair is matched once for both directions. Columns:
``n_matches`` (loose matches), ``n_strict`` (confident ones: a second confidence level), ``sum_conf`` (their
summed confidence), and ``inliers`` (matches consistent with one geometric model) when ``rerank.geometric`` is
set. ``"mask"`` / ``"mask_rev"`` (``[P, B / 8] uint8``, packed bits) say which keypoints of the first / second
photo took part in a match: what the identity-weighted score (kit.rerank.pairs) needs. ``correspondences``
gives one pair's matched keypoints, for RANSAC and for drawing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..device import policy as device_policy
from .extractors import FeatureDict
from .lightglue import LocalMatcher
from .mnn import mnn_scores, prepare
from .sift import SiftExtractor

BASE_COLUMNS = ("n_matches", "n_strict", "sum_conf")
STRICT_CONFIDENCE = 0.5  # LightGlue: a match above this confidence also counts as strict


class PairScorer:
    """Base class: ``name`` (the rerank.extractor entry), ``columns``, ``extract``, ``score``, ``cache_spec``."""

    name: str
    family: str  # "sift" | "lightglue": how it matches (what a plan measures the speed of)

    def __init__(self, rc: dict):
        self.rc = rc
        self.columns = BASE_COLUMNS + (("inliers",) if rc["geometric"] else ())
        self.pairs_matched = 0  # unordered pairs really matched (not read from a cache): tests count on it

    @property
    def device_name(self) -> str:
        pol = getattr(self, "policy", None) or getattr(self._features, "policy", None)
        return str(pol.device) if pol is not None else "cpu"

    def cache_spec(self) -> dict:
        """Everything that changes a pair's scores (features, matcher, geometry): keys the pair cache."""
        rc = self.rc
        return {"stage": "pair_scores", "version": 2, "features": self._features.cache_spec(), "family": self.family,
                "match_threshold": rc["match_threshold"] if self.family == "lightglue" else None,
                "geometric": rc["geometric"] and [rc["geometric"], rc["geometric_model"], rc["geometric_threshold"]]}

    def extract(self, paths: Sequence[str], cache_dir: Path | None = None) -> FeatureDict:
        return self._features.extract(paths, cache_dir)

    def score(self, fa: FeatureDict, fb: FeatureDict, pairs: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def correspondences(self, fa: FeatureDict, i: int, fb: FeatureDict, j: int) -> tuple[np.ndarray, ...]:
        """One pair's loose matches: ``(kpts_a [n, 2], kpts_b [n, 2], confidence [n])`` float32, px of the resized
        photos (``image_size``)."""
        raise NotImplementedError

    def _geometry(self, fa: FeatureDict, i: int, fb: FeatureDict, j: int, match: np.ndarray) -> float:
        from .pairs import geometric_inliers

        rc = self.rc
        return float(geometric_inliers(fa["keypoints"][i], fb["keypoints"][j], match, rc["geometric"],
                                       rc["geometric_model"], float(rc["geometric_threshold"]), int(rc["seed"])))


class SiftScorer(PairScorer):
    """RootSIFT + mutual nearest neighbours and the ratio test (kit.rerank.mnn): the CPU-fast matcher."""

    name, family = "sift", "sift"
    chunk = 16  # gallery photos per similarity block ([16, 512, 512] floats: 16 MB); larger is no faster on CPU

    def __init__(self, rc: dict):
        super().__init__(rc)
        self.policy = device_policy(rc["device"], "off", rc["num_workers"])  # fp32: ratios need the precision
        self._features = SiftExtractor(rc["max_keypoints"], rc["resize"], self.policy.workers)

    @torch.inference_mode()
    def score(self, fa: FeatureDict, fb: FeatureDict, pairs: np.ndarray) -> dict[str, np.ndarray]:
        """``pairs: [P, 2] int64`` (row of fa, row of fb) -> ``{column: [P]}`` and ``{column_rev: [P]}``."""
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        out = {f"{c}{s}": np.zeros(len(pairs), np.float32) for c in self.columns for s in ("", "_rev")}
        ba, bb = fa["descriptors"].shape[1], fb["descriptors"].shape[1]
        hit, hit_rev = np.zeros((len(pairs), ba), bool), np.zeros((len(pairs), bb), bool)
        if not len(pairs):
            return {**out, "mask": np.packbits(hit, 1), "mask_rev": np.packbits(hit_rev, 1)}
        geo = bool(self.rc["geometric"])
        dev = self.policy.device  # the same matmuls run on a GPU when there is one
        rows_b, inv_b = np.unique(pairs[:, 1], return_inverse=True)
        gal = prepare(fb["descriptors"][rows_b], fb["count"][rows_b]).to(dev)  # only the rows some pair uses
        cnt_b = torch.from_numpy(fb["count"][rows_b].astype(np.int64)).to(dev)
        order = np.argsort(pairs[:, 0], kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(pairs[order, 0]) != 0])
        for s, e in zip(starts, np.r_[starts[1:], len(order)]):
            a = int(pairs[order[s], 0])
            n = int(fa["count"][a])
            query = prepare(fa["descriptors"][a:a + 1, :max(n, 1)], [n])[0, :n].to(dev)
            for c in range(s, e, self.chunk):
                sel = order[c:min(e, c + self.chunk)]
                g = torch.from_numpy(inv_b[sel]).to(dev)
                res = {k: v.cpu() for k, v in mnn_scores(query, gal[g], cnt_b[g], matches=True).items()}
                for col in BASE_COLUMNS:
                    out[col][sel] = res[col].numpy()
                    out[f"{col}_rev"][sel] = res[f"{col}_rev"].numpy()
                m, m_rev = res["match"].numpy(), res["match_rev"].numpy()  # [k, n] gallery keypoint or -1
                hit[sel, :n] = m > -1
                for t, p in enumerate(sel):  # the gallery photo's own matched keypoints, for the reverse pair
                    hit_rev[p, m_rev[t][m_rev[t] > -1]] = True
                if geo:
                    for t, p in enumerate(sel):
                        b = int(pairs[p, 1])
                        out["inliers"][p] = self._geometry(fa, a, fb, b, res["match"][t].numpy())
                        rev = res["match_rev"][t].numpy()
                        out["inliers_rev"][p] = self._geometry(fa, a, fb, b, rev)
        return {**out, "mask": np.packbits(hit, 1), "mask_rev": np.packbits(hit_rev, 1)}

    def correspondences(self, fa: FeatureDict, i: int, fb: FeatureDict, j: int) -> tuple[np.ndarray, ...]:
        n = int(fa["count"][i])
        query = prepare(fa["descriptors"][i:i + 1, :max(n, 1)], [n])[0, :n]
        res = mnn_scores(query, prepare(fb["descriptors"][j:j + 1], fb["count"][j:j + 1]),
                         torch.tensor([int(fb["count"][j])]), matches=True)
        m = res["match"][0].numpy()
        ok = np.flatnonzero(m > -1)
        q = torch.from_numpy(fa["descriptors"][i, ok].astype(np.float32))
        g = torch.from_numpy(fb["descriptors"][j, m[ok]].astype(np.float32))
        conf = (q * g).sum(1).numpy()  # cosine of each matched pair, a readable confidence for drawing
        return fa["keypoints"][i, ok], fb["keypoints"][j, m[ok]], conf.astype(np.float32)


class LightGlueScorer(PairScorer):
    """A network extractor (ALIKED, DISK, SuperPoint) with its LightGlue matcher (kit.rerank.lightglue)."""

    family = "lightglue"

    def __init__(self, rc: dict):
        super().__init__(rc)
        self.name = rc["extractor"]
        self._features = LocalMatcher(rc)

    def score(self, fa: FeatureDict, fb: FeatureDict, pairs: np.ndarray) -> dict[str, np.ndarray]:
        """LightGlue's matches are mutual and its confidences shared, so both directions read the same."""
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        m, cf = self._features.match_pairs(fa, fb, pairs)
        out = {"n_matches": (m > -1).sum(1).astype(np.float32),
               "n_strict": (cf > STRICT_CONFIDENCE).sum(1).astype(np.float32),
               "sum_conf": cf.sum(1).astype(np.float32)}
        if self.rc["geometric"]:
            out["inliers"] = np.array([self._geometry(fa, int(a), fb, int(b), m[p])
                                       for p, (a, b) in enumerate(pairs)], np.float32)
        hit_rev = np.zeros((len(pairs), fb["descriptors"].shape[1]), bool)
        rows, cols = np.nonzero(m > -1)
        hit_rev[rows, m[rows, cols]] = True
        return {**out, **{f"{c}_rev": v.copy() for c, v in out.items()},
                "mask": np.packbits(m > -1, 1), "mask_rev": np.packbits(hit_rev, 1)}

    def correspondences(self, fa: FeatureDict, i: int, fb: FeatureDict, j: int) -> tuple[np.ndarray, ...]:
        m, cf = self._features.match_pairs(fa, fb, np.array([[i, j]]), progress=False)
        ok = np.flatnonzero(m[0] > -1)
        return fa["keypoints"][i, ok], fb["keypoints"][j, m[0, ok]], cf[0, ok]


def make_scorer(name: str, rc: dict) -> PairScorer:
    """The scorer for one rerank.extractor entry (``rc``: the completed rerank section)."""
    if name == "sift":
        return SiftScorer(rc)
    return LightGlueScorer({**rc, "extractor": name})
