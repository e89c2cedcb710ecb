"""The array cache: resume, corruption, order."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

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


def test_a_shard_merged_away_meanwhile_is_skipped_silently(tmp_path, monkeypatch):
    """Another process may merge (delete) a shard between this one's listing and its reading: no warning, nothing
    deleted, the other rows still served."""
    for key in ("a", "b", "c"):
        cache.write_shard(tmp_path, [key], {"emb": np.full((1, 3), ord(key), np.float32)})
    victim = sorted(tmp_path.glob("shard-*.safetensors"))[1]
    gone = cache._read_shard(victim)[0]
    real = cache._read_shard

    def racing(path):
        if path == victim:
            path.unlink()  # the other process got there first
        return real(path)

    monkeypatch.setattr(cache, "_read_shard", racing)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a "corrupt" warning would fail here
        row_of, arrays = cache.load_shards(tmp_path)
    assert set(row_of) == {"a", "b", "c"} - set(gone)
    assert len(list(tmp_path.glob("shard-*.safetensors"))) == 2


def test_merge_writes_first_and_deletes_only_what_it_read(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "MAX_SHARDS", 2)
    for i in range(4):
        cache.write_shard(tmp_path, [f"k{i}", "dup"], {"emb": np.array([[i] * 3, [9] * 3], np.float32)})
    other = cache.write_shard(tmp_path, ["z"], {"feat": np.ones((1, 2), np.float32)})  # another layout
    row_of, arrays = cache.load_shards(tmp_path)
    assert sorted(row_of) == ["dup", "k0", "k1", "k2", "k3"]
    left = sorted(tmp_path.glob("shard-*.safetensors"))
    assert other in left and len(left) == 2  # the merged shard and the shard it did not read
    merged = next(p for p in left if p != other)
    keys, merged_arrays = cache._read_shard(merged)
    assert sorted(keys) == sorted(row_of) and len(merged_arrays["emb"]) == 5  # each key once
    assert np.array_equal(arrays["emb"][row_of["k2"]], [2, 2, 2])


def test_time_limit_saves_smaller_chunks_of_whole_batches(tmp_path, monkeypatch):
    """With flush_seconds, the first chunk is one batch, the next ones about flush_seconds of work each (at one
    second a row here: 4 rows), in whole batches, each saved as it finishes."""
    clock = [0.0]

    def one_second_a_row(idx):
        clock[0] += len(idx)
        return {"emb": np.stack([np.full(3, i, np.float32) for i in idx])}

    monkeypatch.setattr(cache, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    calls = []

    def compute(idx):
        calls.append(len(idx))
        return one_second_a_row(idx)

    out = cache.cached_compute(tmp_path, [f"k{i}" for i in range(15)], compute, flush_every=1024,
                               flush_seconds=5, first_chunk=2)
    assert calls == [2, 4, 4, 4, 1]  # 5 s of work is 5 rows, rounded down to whole batches of 2
    assert len(list(tmp_path.glob("shard-*.safetensors"))) == len(calls)
    assert np.array_equal(out["emb"][:, 0], np.arange(15))


def test_unwritable_cache_root_warns_once_and_is_off(tmp_path, monkeypatch):
    from kit.errors import KitWarning

    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("KIT_CACHE", str(tmp_path / "afile" / "cache"))
    with pytest.warns(KitWarning, match=r"\$KIT_CACHE.*cache\.enabled=false") as seen:
        assert cache.cache_root({"enabled": True}) is None
        assert cache.cache_root({"enabled": True}) is None
    assert len(seen) == 1
    monkeypatch.setenv("KIT_CACHE", str(tmp_path / "fine" / "cache"))
    assert cache.cache_root({"enabled": True}) == tmp_path / "fine" / "cache"


def test_overwritten_values_fail_the_checksum_and_are_recomputed(tmp_path):
    """A shard whose values were overwritten in place still parses and holds finite numbers: only its checksum
    tells."""
    keys = ["a", "b", "c"]
    cache.cached_compute(tmp_path, keys, _compute_rows([]))
    (shard,) = tmp_path.glob("shard-*.safetensors")
    data = bytearray(shard.read_bytes())
    data[-4:] = np.float32(7.0).tobytes()  # the last value, 2.0, becomes 7.0; the header is untouched
    shard.write_bytes(bytes(data))
    calls = []
    with pytest.warns(UserWarning, match="do not match the checksum in its header") as seen:
        out = cache.cached_compute(tmp_path, keys, _compute_rows(calls))
    assert len(seen) == 1 and calls == [[0, 1, 2]] and not shard.exists()
    assert np.array_equal(out["emb"][:, 2], [0, 1, 2])


def test_a_shard_without_a_checksum_is_still_read(tmp_path):
    """Shards written before the checksum existed are read as they are (nothing to check them against)."""
    from safetensors.numpy import save_file

    save_file({"emb": np.ones((2, 3), np.float32)}, str(tmp_path / "shard-old.safetensors"),
              metadata={"keys": '["a", "b"]'})
    calls = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.cached_compute(tmp_path, ["a", "b"], _compute_rows(calls))
    assert calls == []


def test_a_failed_write_warns_once_and_the_run_goes_on(tmp_path, monkeypatch):
    """A full disk (safetensors says so with its own exception, not an OSError): every row still comes back, one
    warning names the cache root and the fix, and later writes under that root are not tried again."""
    from kit.errors import KitWarning

    tries = []

    def disk_full(*args, **kwargs):
        tries.append(1)
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(cache, "_WRITES_FAILED", {})
    monkeypatch.setattr(cache, "save_file", disk_full)
    root = tmp_path / "root"
    with pytest.warns(KitWarning) as seen:
        out = cache.cached_compute(root / "embed" / "x", [f"k{i}" for i in range(5)], _compute_rows([]), flush_every=2)
        more = cache.cached_compute(root / "pairs" / "y", ["z"], _compute_rows([]))
    assert np.array_equal(out["emb"][:, 0], np.arange(5)) and more["emb"].shape == (1, 3)
    assert len(seen) == 1 and tries == [1]
    said = str(seen[0].message)
    assert f"cannot write to the cache folder {root} (No space left on device; " in said
    assert "$KIT_CACHE" in said and "cache.enabled=false" in said
    assert not [p for p in root.rglob("*") if p.is_file()]  # no temporary file left


def test_a_merge_that_cannot_be_written_deletes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "MAX_SHARDS", 2)
    folder = tmp_path / "embed" / "x"
    for i in range(3):
        cache.write_shard(folder, [f"k{i}"], {"emb": np.full((1, 3), i, np.float32)})
    monkeypatch.setattr(cache, "_WRITES_FAILED", {})
    monkeypatch.setattr(cache, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.warns(UserWarning, match="cannot write to the cache folder"):
        row_of, _ = cache.load_shards(folder)
    assert sorted(row_of) == ["k0", "k1", "k2"]
    assert len(list(folder.glob("shard-*.safetensors"))) == 3  # the shards it could not merge are all still there
