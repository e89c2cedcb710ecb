"""The metric head (kit/head.py): it finds identity where the raw cosine does not, deterministically, cached."""

from __future__ import annotations

import numpy as np
import pytest

from kit import metrics, retrieve
from kit.config import DEFAULTS
from kit.head import fit_head

HC = {**DEFAULTS["head"], "steps": 200, "dim": 32, "pca": 0, "lr": 1e-2}


def _world(seed: int, n_ids: int = 60, per: int = 6, d: int = 64, signal_dims: int = 8, strength: float = 0.6):
    """Photos whose identity lives in ``signal_dims`` weak dimensions, drowned by strong per-photo nuisance in the
    rest: the raw cosine mostly sees the nuisance."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, signal_dims))
    labels = np.repeat(np.arange(n_ids), per).astype(object)
    x = np.concatenate([strength * (centres[labels.astype(int)] + 0.3 * rng.normal(size=(len(labels), signal_dims))),
                        rng.normal(size=(len(labels), d - signal_dims))], 1)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def _r1(q, g, q_labels, g_labels) -> float:
    return metrics.rank_k(retrieve.ranked_labels(q @ g.T, g_labels, 1), q_labels, ks=(1,))["R-1"]


@pytest.mark.parametrize("loss", ["arcface", "supcon", "both"])
def test_a_head_recovers_identity_hidden_in_a_few_noisy_dimensions(loss):
    x, labels = _world(0)
    gallery = np.arange(len(x)) % 6 != 0  # one photo of each identity is the query, never trained on
    frozen = _r1(x[~gallery], x[gallery], labels[~gallery], labels[gallery])
    head = fit_head(x[gallery], labels[gallery], {**HC, "loss": loss})
    learned = _r1(head.project(x[~gallery]), head.project(x[gallery]), labels[~gallery], labels[gallery])
    assert frozen < 0.1 and learned > frozen + 0.3, (frozen, learned)
    # the map weighs the identity dimensions far above the nuisance ones
    w = np.linalg.norm(head.weight, axis=1)
    assert w[:8].mean() > 2 * w[8:].mean()


def test_a_head_is_deterministic_and_cached(tmp_path):
    x, labels = _world(1, n_ids=12)
    a = fit_head(x, labels, HC, tmp_path)
    assert len(list((tmp_path / "head").glob("*.npy"))) == 1
    b = fit_head(x, labels, HC, tmp_path)  # read back
    c = fit_head(x, labels, HC)  # trained again
    assert np.array_equal(a.weight, b.weight) and np.array_equal(a.weight, c.weight)
    assert not np.array_equal(a.weight, fit_head(x, labels, {**HC, "seed": 1}).weight)


def test_pca_over_as_many_directions_as_photos_keeps_what_the_head_learns():
    """Photos span at most N directions: a head learned on their top N principal directions sees all of the data."""
    x, labels = _world(2, n_ids=20, d=256, strength=2.0)
    gallery = np.arange(len(x)) % 6 != 0
    full = fit_head(x[gallery], labels[gallery], HC)
    fast = fit_head(x[gallery], labels[gallery], {**HC, "pca": int(gallery.sum())})
    assert fast.weight.shape == full.weight.shape == (256, 32)
    r1 = [_r1(h.project(x[~gallery]), h.project(x[gallery]), labels[~gallery], labels[gallery]) for h in (full, fast)]
    assert r1[1] > 0.3 and abs(r1[0] - r1[1]) < 0.15, r1


@pytest.mark.parametrize("loss", ["supcon", "both"])
def test_a_supcon_head_on_single_photo_identities_still_trains(loss):
    """SupCon has nothing to contrast when no identity has two photos (a cross-fitting fold can leave that): the
    head falls back to ArcFace instead of failing or staying at its random start."""
    x, labels = _world(3, n_ids=10, per=1)
    head = fit_head(x, labels, {**HC, "loss": loss})
    assert np.array_equal(head.weight, fit_head(x, labels, {**HC, "loss": "arcface"}).weight)
