"""A metric head per dataset: a linear map of the frozen global descriptors, learned from its labelled photos.

Frozen descriptors tell individuals apart by ImageNet's (or MegaDescriptor's) notion of similarity; a head
trained with ArcFace on the dataset's own identities re-weights them towards what separates *these* animals.
Measured on held-out photos of four species (issue 18), such a head lifted R-1 1.5-2.5x over the frozen cosine.

``fit_head(x, labels, hc)`` trains one on ``x: [N, D] float32`` (the descriptors side by side, ``combine``), and
``Head.project(x) -> [N, d] float32`` (L2-normalised) maps any photo into its space. A head is deterministic
(seeded, full-batch) and cached by its inputs.

In the pipeline (kit/pipeline/identification.py) the head's cosine is one more pair column (``cos:head``, with
``rank:head``) of the ``<pipeline>+head`` pipeline, and every row is judged by a head that never saw it:
``cross_fitted`` trains ``head.folds`` heads each without one fold of photos (for known pseudo-queries, and for the
real queries, so that both see the same kind of head) and as many without one fold of identities (for pretend-new
ones). ``bench/head.py`` measures a head alone on a validation split (bench/README.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Head:
    """A fitted head: ``weight [D, d] float32``; ``project`` maps ``[N, D]`` descriptors to ``[N, d]`` unit rows."""

    weight: np.ndarray
    n_identities: int
    n_photos: int

    def project(self, x: np.ndarray) -> np.ndarray:
        y = np.asarray(x, np.float32) @ self.weight
        return (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _key(x: np.ndarray, labels: np.ndarray, hc: dict) -> str:
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(x, np.float32).tobytes())
    h.update("\x1f".join(map(str, labels)).encode())
    skip = ("enabled", "min_identities", "device", "folds", "query")  # settings that do not change a head's weights
    h.update(repr(sorted((k, v) for k, v in hc.items() if k not in skip)).encode())
    return h.hexdigest()[:20]


def fit_head(x: np.ndarray, labels: np.ndarray, hc: dict, cache_dir: Path | None = None) -> Head:
    """Train a head on ``x: [N, D] float32`` (L2-normalised descriptors) with identities ``labels: [N]``.

    Full-batch (sub-center) ArcFace over a bias-free linear map D -> ``head.dim`` (or, with ``head.loss``, the
    supervised contrastive loss at ``head.temperature``, or both summed; photos of which no two share an identity
    train ArcFace alone, SupCon having no pair to contrast): ``head.steps`` AdamW steps at
    ``head.lr``, scale ``head.scale``, margin ``head.margin``, Gaussian noise of sd ``head.noise`` on the inputs
    each step (a few thousand photos memorise fast; the noise keeps the map smooth). Seeded and deterministic;
    cached under ``cache_dir/head`` by the inputs and settings.
    """
    import torch

    labels = np.asarray(labels, dtype=object)
    x = np.ascontiguousarray(x, np.float32)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "head" / f"{_key(x, labels, hc)}.npy"
        if path.is_file():
            try:
                w = np.load(path)
                if w.shape == (x.shape[1], int(hc["dim"])):  # x: the inputs, before any projection
                    return Head(w, len(set(labels)), len(x))
            except (OSError, ValueError):
                pass  # a damaged entry is recomputed and rewritten
    _, y = np.unique(labels.astype(str), return_inverse=True)
    n_id, k = int(y.max()) + 1, int(hc["subcenters"])
    # Fewer photos than dimensions: the photos span at most N directions, so the map is learned on their top
    # principal directions (uncentred, so that cosines keep their meaning) and composed back: the same head, and
    # 5-10x faster on a CPU than over all D inputs.
    basis = None
    r = int(hc["pca"])
    if 0 < r < x.shape[1]:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        basis = vt[:r].T.astype(np.float32)  # [D, r]
        x = x @ basis
    gen = torch.Generator().manual_seed(int(hc["seed"]))
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))
    proj = torch.nn.Parameter(torch.randn(x.shape[1], int(hc["dim"]), generator=gen) / np.sqrt(x.shape[1]))
    centres = torch.nn.Parameter(torch.randn(n_id * k, int(hc["dim"]), generator=gen))
    opt = torch.optim.AdamW([proj, centres], lr=float(hc["lr"]), weight_decay=float(hc["weight_decay"]))
    s, m, noise = float(hc["scale"]), float(hc["margin"]), float(hc["noise"])
    rows, losses, temp = torch.arange(len(yt)), hc["loss"], float(hc["temperature"])
    if np.bincount(y).max() < 2:
        losses = "arcface"  # no identity with two photos: nothing to contrast; ArcFace still learns from centres
    if losses != "arcface":
        eye = torch.eye(len(yt))
        positives = (yt[:, None] == yt[None, :]).float() - eye
        n_pos = positives.sum(1)
        has = n_pos > 0  # a photo alone in its identity contrasts nothing
    with torch.enable_grad():
        for _ in range(int(hc["steps"])):
            xi = xt + noise * torch.randn(xt.shape, generator=gen) if noise > 0 else xt
            z = torch.nn.functional.normalize(xi @ proj, dim=1)
            loss = torch.zeros(())
            if losses != "supcon":
                c = torch.nn.functional.normalize(centres, dim=1)
                cos = (z @ c.T).view(len(z), n_id, k).amax(dim=2)  # [N, I]: each identity's nearest sub-centre
                target = cos[rows, yt].clamp(-1 + 1e-6, 1 - 1e-6)
                logits = cos.scatter(1, yt[:, None], torch.cos(torch.acos(target) + m)[:, None])
                loss = loss + torch.nn.functional.cross_entropy(s * logits, yt)
            if losses != "arcface":  # supervised contrastive: every photo against all others, full batch
                sims = z @ z.T / temp - 1e9 * eye
                logp = sims - torch.logsumexp(sims, 1, keepdim=True)
                loss = loss + (-(logp * positives).sum(1)[has] / n_pos[has]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    w = proj.detach().numpy().astype(np.float32)
    head = Head(w if basis is None else basis @ w, n_id, len(x))
    if path is not None:
        from .io import atomic_path

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.save(fh, head.weight)
        except OSError as exc:  # a cache that cannot be written costs a retrain next time: warned once, no more
            from .cache import write_failed

            write_failed(path.parent, exc)
    return head


def photo_folds(photo_keys: np.ndarray, labels: np.ndarray, id_keys: np.ndarray, k: int, seed: int) -> np.ndarray:
    """[N] int fold of each photo, dealt out within its identity (so that each fold leaves every identity with two
    or more photos some of its photos): an identity's photos in ``photo_keys`` order, the first in the fold of its
    key (``splits.name_folds`` of ``id_keys``), the next in the following fold, and so on. No name moves a fold."""
    from .splits import name_folds

    start = name_folds(id_keys, k, seed)
    order = np.lexsort((np.asarray(photo_keys, dtype=str), np.asarray(labels, dtype=str)))
    labs = np.asarray(labels, dtype=str)[order]
    first = np.r_[True, labs[1:] != labs[:-1]]
    pos = np.arange(len(order)) - np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    out = np.empty(len(order), np.int64)
    out[order] = (start[order] + pos) % max(1, int(k))
    return out


def cross_fitted(x: np.ndarray, labels: np.ndarray, photo_keys: np.ndarray, id_keys: np.ndarray, hc: dict,
                 x_q: np.ndarray, q_keys: np.ndarray, cache_dir: Path | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The head's cosines of every pseudo-query and query, each from a head that never saw that photo, and that
    saw as much of the rest as any other row's head did.

    x: [N, D] float32 (``combine`` of the labelled photos' descriptors); labels, photo_keys (image ids), id_keys
    (``anchors`` of each row's identity): [N]; x_q: [Q, D] the queries, q_keys: [Q] their image ids.
    ``head.folds`` heads are trained on all labelled photos but one fold of them (dealt out within each identity,
    ``photo_folds``), and as many on all identities but one fold of identities.
    Returns (known [N, N], new [N, N], query [Q, N]) float32: ``known[i]`` row i's cosines under the head that never
    saw photo i (a known query: its identity seen, the photo not); ``new[i]`` under the head that never saw i's
    identity (a new animal); ``query[j]`` under the photo-fold head that a hash of the query's key picks
    (``head.query="fold"``), or the mean over all photo-fold heads (``"mean"``). A real
    query is thereby scored exactly as a known pseudo-query is (the head missed 1/folds of the database): with a head
    of all photos its cosines ran higher than any the calibration had seen, and tau landed badly (issue 18).
    The diagonals are -inf. Cost: 2 x ``head.folds`` heads, each cached.
    """
    from .splits import name_folds

    k, seed = int(hc["folds"]), int(hc["seed"])
    labels = np.asarray(labels, dtype=object)
    out = {}
    q_fold = name_folds(np.asarray(q_keys, dtype=str), k, seed) if len(q_keys) else np.zeros(0, np.int64)
    query = np.full((len(x_q), len(x)), -np.inf, np.float32)
    for role, fold in (("known", photo_folds(photo_keys, labels, id_keys, k, seed)),
                       ("new", name_folds(id_keys, k, seed))):
        sims = np.full((len(x), len(x)), -np.inf, np.float32)
        for f in range(k):
            rows = fold == f
            if rows.all() or not (rows.any() or role == "known"):
                continue
            head = fit_head(x[~rows], labels[~rows], hc, cache_dir)
            z = head.project(x)
            sims[rows] = z[rows] @ z.T
            if role == "known" and hc["query"] == "mean" and len(x_q):
                # -inf where no head has contributed yet; each of the k heads adds its share
                part = (head.project(x_q) @ z.T) / np.float32(k)
                query = np.where(np.isfinite(query), query + part, part)
            elif role == "known" and (q_fold == f).any():
                query[q_fold == f] = head.project(x_q[q_fold == f]) @ z.T
        np.fill_diagonal(sims, -np.inf)
        out[role] = sims
    return out["known"], out["new"], query
