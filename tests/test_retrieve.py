"""Exact top-K against brute force, ties, K > N; identity aggregation oracle; shortlists by hand."""

from __future__ import annotations

import numpy as np
import pytest

from kit.retrieve import dedup_shortlist, identity_scores, ranked_labels, topk_cosine


def brute(q, g, k):
    s = q @ g.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), order


@pytest.mark.parametrize("chunk, gchunk", [(4096, 65536), (3, 5), (1, 1)])
def test_topk_equals_brute_force(chunk, gchunk):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(17, 8)).astype(np.float32)
    g = rng.normal(size=(23, 8)).astype(np.float32)
    s, i = topk_cosine(q, g, 7, chunk_size=chunk, gallery_chunk=gchunk)
    bs, bi = brute(q, g, 7)
    assert s.dtype == np.float32 and i.dtype == np.int64
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(s, bs, rtol=1e-6)


@pytest.mark.parametrize("gchunk", [65536, 4, 1])
def test_ties_break_toward_lower_index(gchunk):
    # integer-valued vectors: many exactly equal dot products
    rng = np.random.default_rng(1)
    q = rng.integers(0, 2, size=(30, 3)).astype(np.float32)
    g = rng.integers(0, 2, size=(40, 3)).astype(np.float32)
    s, i = topk_cosine(q, g, 9, gallery_chunk=gchunk)
    bs, bi = brute(q, g, 9)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_array_equal(s, bs)


def test_k_larger_than_gallery():
    rng = np.random.default_rng(2)
    q, g = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(3, 5)).astype(np.float32)
    s, i = topk_cosine(q, g, 10)
    assert s.shape == (4, 3)
    np.testing.assert_array_equal(i, brute(q, g, 3)[1])
    s, i = topk_cosine(q, g[:0], 10)
    assert s.shape == (4, 0)


def test_identity_scores_oracle():
    scores = np.array([[0.9, 0.1, 0.5, 0.7],
                       [0.2, 0.8, 0.3, 0.1]], np.float32)
    labels = np.array(["b", "a", "b", "a"], dtype=object)
    ids, mx = identity_scores(scores, labels, "max")
    assert list(ids) == ["a", "b"]
    np.testing.assert_allclose(mx, [[0.7, 0.9], [0.8, 0.3]])
    ids, tm = identity_scores(scores, labels, "topm", m=2)
    np.testing.assert_allclose(tm, [[0.4, 0.7], [0.45, 0.25]])


def test_ranked_labels():
    scores = np.array([[0.1, 0.9, 0.5]], np.float32)
    assert list(ranked_labels(scores, np.array(["x", "y", "z"], dtype=object), 2)[0]) == ["y", "z"]


def test_dedup_shortlist_by_hand():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5], [0.1, 0.2, -np.inf, 0.4, np.nan]], np.float32)
    labels = ["a", "a", "a", "b", "c"]
    np.testing.assert_array_equal(dedup_shortlist(scores, labels, 3, 2), [[0, 1, 3], [3, 1, 0]])
    np.testing.assert_array_equal(dedup_shortlist(scores, labels, 5, 1), [[0, 3, 4, -1, -1], [3, 1, -1, -1, -1]])
    np.testing.assert_array_equal(dedup_shortlist(scores, labels, 3, 0), [[0, 1, 2], [3, 1, 0]])
    # -inf and NaN are never shortlisted, even when slots stay empty
    np.testing.assert_array_equal(dedup_shortlist(scores, labels, 5, 0)[1], [3, 1, 0, -1, -1])
    assert dedup_shortlist(scores, labels, 3, 2).dtype == np.int64


