"""The array cache: resume, corruption, order."""

from __future__ import annotations

import numpy as np
import pytest

from kit import cache


def _compute_rows(calls):
    def compute(idx):
        calls.append(list(idx))
        return {"emb": np.stack([np.full(3, i, np.float32) for i in idx])}
    return compute


def test_only_missing_rows_are_computed(tmp_path):
    keys = [f"k{i}" for i in range(10)]
    calls = []
    first = cache.cached_compute(tmp_path, keys[:6], _compute_rows(calls), flush_every=4)
    assert calls == [[0, 1, 2, 3], [4, 5]]
    calls.clear()
    out = cache.cached_compute(tmp_path, keys, _compute_rows(calls))
    assert calls == [[6, 7, 8, 9]]
    # rows come back in key order whether cached or new; cached values are those first computed
    assert np.array_equal(out["emb"][:, 0], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert np.array_equal(out["emb"][:6], first["emb"])


def test_interrupted_run_resumes(tmp_path):
    keys = [f"k{i}" for i in range(9)]

    def dies_on_third_chunk(idx):
        if idx[0] >= 6:
            raise KeyboardInterrupt
        return {"emb": np.ones((len(idx), 3), np.float32)}

    with pytest.raises(KeyboardInterrupt):
        cache.cached_compute(tmp_path, keys, dies_on_third_chunk, flush_every=3)
    calls = []
    cache.cached_compute(tmp_path, keys, _compute_rows(calls), flush_every=3)
    assert calls == [[6, 7, 8]]


def test_truncated_shard_is_recomputed_with_warning(tmp_path):
    keys = ["a", "b", "c"]
    cache.cached_compute(tmp_path, keys, _compute_rows([]))
    (shard,) = tmp_path.glob("shard-*.safetensors")
    shard.write_bytes(shard.read_bytes()[:-5])
    calls = []
    with pytest.warns(UserWarning, match="corrupt"):
        out = cache.cached_compute(tmp_path, keys, _compute_rows(calls))
    assert calls == [[0, 1, 2]]
    assert np.array_equal(out["emb"][:, 0], [0, 1, 2])


def test_garbage_shard_is_recomputed(tmp_path):
    (tmp_path / "shard-x.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    calls = []
    with pytest.warns(UserWarning, match="corrupt"):
        cache.cached_compute(tmp_path, ["a"], _compute_rows(calls))
    assert calls == [[0]]


def test_disabled_cache_writes_nothing(tmp_path):
    calls = []
    out = cache.cached_compute(None, ["a", "b"], _compute_rows(calls))
    assert calls == [[0, 1]] and out["emb"].shape == (2, 3)
    assert cache.cache_root({"enabled": False}) is None


def test_image_key_changes_with_content(tmp_path):
    p = tmp_path / "img.jpg"
    p.write_bytes(b"one")
    k1 = cache.image_key(p)
    p.write_bytes(b"other!")
    assert cache.image_key(p) != k1
