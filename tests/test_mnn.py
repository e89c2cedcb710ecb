"""kit.rerank.mnn and kit.rerank.sift: the batched matcher against a per-pair brute-force oracle; RootSIFT rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kit.rerank.mnn import mnn_reference, mnn_scores, prepare


def _unit(rng, n, d=32):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", range(4))
def test_batched_equals_the_per_pair_reference(seed):
    rng = np.random.default_rng(seed)
    base = _unit(rng, 40)
    q = base + 0.15 * _unit(rng, 40)  # a noisy copy: many true matches
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    counts = [40, 25, 3, 1, 0, 40]  # padded gallery photos of several sizes, one below the ratio test's minimum
    gal = np.zeros((len(counts), 40, 32), np.float32)
    for k, c in enumerate(counts):
        src = base if k in (0, 1) else _unit(rng, 40)
        gal[k, :c] = src[rng.permutation(40)[:c]]
    out = mnn_scores(prepare(q[None], [40])[0], prepare(gal, counts), torch.tensor(counts))
    for ratio, col in ((0.85, "n_matches"), (0.7, "n_strict")):
        want = [mnn_reference(q, gal[k, :c], ratio) for k, c in enumerate(counts)]
        assert out[col].tolist() == want
        want_rev = [mnn_reference(gal[k, :c], q, ratio) for k, c in enumerate(counts)]
        assert out[f"{col}_rev"].tolist() == want_rev
    assert out["n_matches"][0] > 20 and out["n_matches"][3] == 0 and out["n_matches"][4] == 0
    assert (out["sum_conf"] <= out["n_matches"]).all() and (out["sum_conf"] >= 0).all()


def test_no_keypoints_gives_zeros_not_a_crash():
    empty = mnn_scores(torch.zeros((0, 33)), prepare(torch.zeros((2, 8, 32)), [8, 0]), torch.tensor([8, 0]))
    assert all(v.tolist() == [0.0, 0.0] for v in empty.values())


def test_rootsift_rows_are_padded_unit_vectors():
    from kit.rerank.sift import rootsift_image

    rng = np.random.default_rng(0)
    img = (rng.random((200, 240)) * 255).astype(np.uint8)
    img = np.kron(img[::8, ::8], np.ones((8, 8), np.uint8))  # blocks: corners SIFT finds
    f = rootsift_image(img, 64)
    n = int(f["count"])
    assert 10 < n <= 64 and f["descriptors"].shape == (64, 128) and f["descriptors"].dtype == np.float16
    norms = np.linalg.norm(f["descriptors"][:n].astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)
    assert (f["descriptors"][n:] == 0).all() and (np.diff(f["scores"][:n]) <= 0).all()
    assert f["image_size"].tolist() == [240, 200]
    blank = rootsift_image(np.zeros((50, 50), np.uint8), 64)
    assert int(blank["count"]) == 0 and (blank["descriptors"] == 0).all()
