"""ArcFace fine-tuning: the loss against a NumPy oracle, sampling, resume, DDP gradients, CLI round trip.

Models are timm's tiny test networks with random weights (embed.allow_random_weights) at 32-64 px.
"""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from kit import train as kt
from kit.cli import main
from kit.config import load_config

TINY = ["--set", "embed.model=test_efficientnet", "--set", "embed.weights=random",
        "--set", "embed.allow_random_weights=true", "--set", "embed.num_workers=0",
        "--set", "train.image_size=48", "--set", "train.batch_size=8", "--set", "train.per_identity=2",
        "--set", "train.steps_per_epoch=4", "--set", "train.num_workers=0", "--set", "train.val_identities=0.5",
        "--set", "train.val_unknown=0.5", "--set", "train.margin_warmup_epochs=0", "--set", "train.warmup_epochs=0",
        "--set", "train.lr_head=0.01", "--set", "train.embed_dim=32", "--set", "train.plot=false"]


def tiny_conf(**train) -> dict:
    conf = load_config(None, [a for a in TINY if a != "--set"])
    conf["train"].update(train)
    return conf


# ------------------------------------------------------------------------------------------------ loss


def arcface_oracle(emb, weight, labels, subcenters, margin, scale):
    """NumPy ArcFace: cos to each class's nearest sub-centre, cos(theta + m) on the true class (InsightFace's
    cos(theta) - m sin(m) where theta + m > pi), times s. Returns logits [B, C], the mean cross-entropy and
    which rows took the fallback."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    w = weight / np.linalg.norm(weight, axis=1, keepdims=True)
    n_classes = weight.shape[0] // subcenters
    cos = (e @ w.T).reshape(len(e), n_classes, subcenters).max(axis=2)
    logits = cos.copy()
    fallback = np.zeros(len(labels), bool)
    for i, y in enumerate(labels):
        theta = math.acos(cos[i, y])
        fallback[i] = theta + margin > math.pi
        logits[i, y] = cos[i, y] - margin * math.sin(margin) if fallback[i] else math.cos(theta + margin)
    logits *= scale
    z = logits - logits.max(axis=1, keepdims=True)
    loss = -(z[np.arange(len(labels)), labels] - np.log(np.exp(z).sum(axis=1))).mean()
    return logits, loss, fallback


@pytest.mark.parametrize("subcenters,margin,scale", [(1, 0.5, 30.0), (3, 0.4, 16.0), (2, 0.0, 10.0), (1, 1.2, 64.0)])
def test_arcface_head_matches_numpy_oracle(subcenters, margin, scale):
    rng = np.random.default_rng(subcenters)
    emb = rng.normal(size=(12, 16))
    labels = np.r_[0, 1, 2, rng.integers(0, 5, 9)]
    head = kt.ArcFaceHead(16, 5, subcenters, scale, margin)
    with torch.no_grad():  # class 0 and 1 point away from rows 0 and 1 (theta near pi), class 2 close to row 2
        for c, sign in ((0, -1), (1, -1), (2, 1)):
            noise = torch.from_numpy(rng.normal(scale=0.1, size=(subcenters, 16))).float()
            head.weight[c * subcenters:(c + 1) * subcenters] = sign * torch.from_numpy(emb[c]).float() + noise
    y = torch.from_numpy(labels)
    got = head(torch.from_numpy(emb).float(), y)
    want, want_loss, fallback = arcface_oracle(emb, head.weight.detach().double().numpy(), labels, subcenters,
                                               margin, scale)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-4, atol=1e-4 * scale)
    assert float(torch.nn.functional.cross_entropy(got.detach(), y)) == pytest.approx(want_loss, rel=1e-4)
    if margin > 0:  # both branches of the formula were compared
        assert fallback[:2].all() and not fallback[2]


def test_arcface_margin_zero_is_scaled_cosine():
    cos = torch.rand(6, 4) * 2 - 1
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    assert torch.allclose(kt.arcface_logits(cos, y, 0.0, 10.0), 10 * cos.clamp(-1 + 1e-6, 1 - 1e-6), atol=1e-5)


# -------------------------------------------------------------------------------------------- sampling


def test_identity_batches_are_balanced_and_seeded():
    labels = np.repeat(np.arange(10), [1, 2, 3, 4, 5, 6, 7, 8, 9, 30])
    batches = kt.identity_batches(labels, 12, 3, 20, np.random.default_rng(0))
    assert batches.shape == (20, 12)
    for b in batches:
        ids, counts = np.unique(labels[b], return_counts=True)
        assert len(ids) == 4 and (counts == 3).all()  # 4 identities x 3 photos
    seen = np.bincount(labels[batches[:, ::3].ravel()], minlength=10)
    assert seen.max() - seen.min() <= 1  # every identity about equally often, whatever its photo count
    assert np.array_equal(batches, kt.identity_batches(labels, 12, 3, 20, np.random.default_rng(0)))
    plain = kt.identity_batches(labels, 12, 0, 7, np.random.default_rng(1))
    assert sorted(plain.ravel()[:len(labels)]) == list(range(len(labels)))  # a full pass before any repeat


def test_process_share_cuts_the_batch_in_order():
    batch = np.arange(12)
    parts = [kt.process_share(batch, 2, r, 3) for r in range(2)]
    assert np.array_equal(np.concatenate([parts[r][k] for k in range(3) for r in range(2)]), batch)
    # one process accumulating 2 micro-batches sees what 2 processes see in one step each
    assert [list(p) for p in kt.process_share(batch, 1, 0, 2)] == [list(kt.process_share(batch, 2, r, 1)[0])
                                                                   for r in range(2)]


def test_holdout_is_identity_disjoint_and_open_set(tiny_2025):
    frame = kt.training_frame(tiny_2025)
    tr, val = kt.holdout_split(frame, tiny_conf()["train"])
    assert not set(zip(tr["dataset"], tr["identity"])) & set(zip(val["dataset"], val["identity"]))
    assert len(tr) + len(val) == len(frame)
    assert val["new_identity"].any() and (~val["new_identity"]).any()
    assert set(val["split"]) == {"database", "query"}


def test_training_frame_reads_a_folder_per_identity(tiny_2025, tmp_path):
    import shutil

    frame = kt.training_frame(tiny_2025)
    for r in frame.head(7).itertuples():
        (tmp_path / "zoo" / r.identity).mkdir(parents=True, exist_ok=True)
        shutil.copy(r.filepath, tmp_path / "zoo" / r.identity / f"{r.image_id}_leftphoto.png")
    got = kt.training_frame(tmp_path / "zoo", folders=True)
    assert len(got) == 7 and set(got["dataset"]) == {"zoo"} and (got["orientation"] == "left").all()
    assert sorted(got["identity"]) == sorted(frame.head(7)["identity"])


def test_heldout_metrics_on_perfect_embeddings():
    val = pd.DataFrame({"identity": list("aabbccdd"), "dataset": "x",
                        "split": ["database", "query"] * 3 + ["query", "query"],
                        "new_identity": [False] * 6 + [True, True]})
    emb = np.eye(4, dtype=np.float32)[[0, 0, 1, 1, 2, 2, 3, 3]]  # one direction per identity
    m = kt.heldout_metrics(emb, val)
    assert m["R-1"] == 1.0 and m["mAP"] == 1.0 and m["score"] == 1.0
    emb[1] = [0.6, 0.8, 0, 0]  # a's query is now nearer b's photo than a's
    m = kt.heldout_metrics(emb, val)
    assert m["R-1"] == pytest.approx(2 / 3) and m["R-5"] == 1.0 and m["mAP"] == pytest.approx((0.5 + 2) / 3)


# ------------------------------------------------------------------------------------------------ model


def test_chain_matches_cnns_not_transformers():
    import timm

    assert kt.chain_matches(timm.create_model("test_efficientnet", num_classes=0), 32)
    assert kt.chain_matches(timm.create_model("resnet10t", num_classes=0), 32)
    assert not kt.chain_matches(timm.create_model("test_vit", num_classes=0), 160)


def test_cached_frozen_layers_train_only_the_rest(tiny_2025, tmp_path):
    conf = tiny_conf(freeze_groups=3, cache_views=2, epochs=1, steps_per_epoch=2, preload=False)
    trainer = kt.Trainer(kt.training_frame(tiny_2025), conf["train"], conf["embed"], tmp_path / "out")
    assert trainer.net.start > 0 and trainer.cache.shape[:2] == (2, len(trainer.train_df))
    before = {k: v.clone() for k, v in trainer.net.embedder.state_dict().items()}
    cached = trainer.val_embeddings()
    trainer.val_cache = None  # the same photos through the whole network, as the embed stage runs it
    np.testing.assert_allclose(cached, trainer.val_embeddings(), atol=2e-2)
    trainer.fit()
    after = trainer.net.embedder.state_dict()
    frozen = set(trainer.frozen)
    assert frozen and all(torch.equal(before[f"backbone.{k}"], after[f"backbone.{k}"]) for k in frozen)
    frozen_bn = [k for k in before if k.endswith("running_mean") and k.replace("running_mean", "weight")[9:] in frozen]
    assert frozen_bn and all(torch.equal(before[k], after[k]) for k in frozen_bn)  # statistics fixed too
    assert not torch.equal(before["neck.0.weight"], after["neck.0.weight"])
    assert not torch.equal(before["backbone.conv_head.weight"], after["backbone.conv_head.weight"])


# --------------------------------------------------------------------------------- CLI: train, resume, use


@pytest.mark.slow
def test_train_resume_then_submit(tiny_2025, tmp_path, monkeypatch, capsys):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    args = ["--set", "train.epochs=2", *TINY]
    assert main(["train", str(tiny_2025), "--out", str(straight), *args]) == 0
    hist = pd.read_csv(straight / "history.csv")
    assert list(hist["epoch"]) == [0, 1, 2]
    assert hist["loss"].iloc[2] < hist["loss"].iloc[1]  # training lowers the loss
    assert {"R-1", "mAP", "score"} <= set(hist.columns) and hist["R-1"].notna().all()
    for folder in (straight, straight / "last"):
        assert {"config.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}
    assert (straight / "last" / kt.STATE_FILE).is_file()
    saved = yaml.safe_load((straight / "train_config.yaml").read_text())  # the whole merged config, not 2 sections
    assert saved == load_config(None, [a for a in args if a != "--set"])

    # an interrupt in epoch 2, then the same command resumes from the end of epoch 1
    real = kt.Trainer.train_epoch

    def interrupted(self):
        if self.epoch == 2:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(kt.Trainer, "train_epoch", interrupted)
    capsys.readouterr()
    assert main(["train", str(tiny_2025), "--out", str(broken), *args]) == 130  # Ctrl-C: a line, no traceback
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"interrupted: kept the last finished epoch's checkpoint in {broken / 'last'}; rerun the same command to "
        "resume from it")
    monkeypatch.setattr(kt.Trainer, "train_epoch", real)
    assert list(pd.read_csv(broken / "history.csv")["epoch"]) == [0, 1]
    capsys.readouterr()
    assert main(["train", str(tiny_2025), "--out", str(broken), *args]) == 0
    log = capsys.readouterr().out
    assert "epoch 2/2 " in log and "epoch 1/2 " not in log  # epoch 1 was not trained again
    from safetensors.torch import load_file

    a = load_file(str(straight / "last" / "model.safetensors"))
    b = load_file(str(broken / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    pd.testing.assert_frame_equal(pd.read_csv(straight / "history.csv").drop(columns="seconds"),
                                  pd.read_csv(broken / "history.csv").drop(columns="seconds"))

    # the checkpoint is a backbone preset for the embed stage and kit submit
    from kit import embed

    bb = embed.load_descriptor({**load_config()["embed"], "weights": f"kit:{straight}"})
    assert bb.name == "test_efficientnet" and bb.dim == 32 and bb.preprocess.size == 48
    out = tmp_path / "sub.csv"
    assert main(["submit", str(tiny_2025), "--out", str(out), "--set", f"embed.weights={straight}",
                 "--set", "embed.num_workers=0"]) == 0
    assert len(pd.read_csv(out)) == len(pd.read_csv(tiny_2025 / "sample_submission.csv"))


def test_checkpoint_files_keep_the_umask(tiny_2025, tmp_path):
    """Under the usual umask 022 every file a run writes is 0644 (the atomic writer's temporaries are 0600)."""
    out = tmp_path / "out"
    args = ["--set", "train.epochs=1", "--set", "train.steps_per_epoch=1", "--set", "train.val_identities=0",
            "--set", "train.validate_before=false", *TINY, "--set", "train.plot=true"]
    old = os.umask(0o022)
    try:
        assert main(["train", str(tiny_2025), "--out", str(out), *args]) == 0
    finally:
        os.umask(old)
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert {"model.safetensors", "config.json", "history.csv", "curve.png", "train_config.yaml",
            f"last/{kt.STATE_FILE}", "last/model.safetensors", "last/config.json"} == set(modes)  # no temporaries
    assert set(modes.values()) == {0o644}, modes


# ------------------------------------------------------------------------------------------------- DDP


def _tiny_nets():
    """Two tiny Nets with fixed weights: no BatchNorm at all (GroupNorm, no neck), and BatchNorm throughout.
    float64, so that summation order (threads, all-reduce) cannot hide a real difference."""
    from kit.embed import Embedder

    torch.manual_seed(0)
    gn = kt.Net(Embedder("test_efficientnet_gn", "none"), kt.ArcFaceHead(256, 4, 2, 30.0, 0.3))
    bn = kt.Net(Embedder("test_efficientnet", "linear_bn", 16), kt.ArcFaceHead(16, 4, 2, 30.0, 0.3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64), torch.randint(0, 4, (8,), generator=g)
    return (gn.double(), bn.double()), x, y


def _grads(net):
    return [p.grad.clone() for p in net.parameters()]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    where = kt.init_distributed("cpu")
    try:
        nets, x, y = _tiny_nets()
        rows = kt.process_share(np.arange(len(x)), world, rank, 1)[0]
        grads = []
        for net in nets:
            net.train()
            model = torch.nn.parallel.DistributedDataParallel(net)
            kt.accumulate_gradients(model, [(x[rows], y[rows])])
            grads.append(_grads(net))
        if rank == 0:
            torch.save(grads, out)
    finally:
        if where.owns_group:
            torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_gradients_match_one_process(tmp_path):
    """2 gloo processes, half the batch each: the averaged gradients equal one process's on the whole batch
    (no BatchNorm), and with BatchNorm (per-process statistics) one process accumulating the same halves."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "g.pt")), nprocs=2, join=True)
    ddp_gn, ddp_bn = torch.load(tmp_path / "g.pt")

    (gn, bn), x, y = _tiny_nets()
    gn.train()
    kt.accumulate_gradients(gn, [(x, y)])  # the concatenated batch in one pass
    scale = max(float(b.abs().max()) for b in _grads(gn))
    for a, b in zip(ddp_gn, _grads(gn)):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9 * scale)
    bn.train()
    halves = kt.process_share(np.arange(len(x)), 1, 0, 2)
    kt.accumulate_gradients(bn, [(x[h], y[h]) for h in halves])
    scale = max(float(b.abs().max()) for b in _grads(bn))
    for a, b in zip(ddp_bn, _grads(bn)):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9 * scale)
    assert any(g.abs().sum() > 0 for g in ddp_gn)


def test_resume_tells_a_longer_schedule_from_another_model():
    from kit.config import dump_config

    saved = yaml.safe_load(dump_config(tiny_conf()))  # as OUT/train_config.yaml holds it
    conf = tiny_conf(epochs=30, num_workers=3, embed_dim=16, crop_scale=(0.5, 1.0))
    conf["embed"]["batch_size"] = 4  # how the run executes: free
    conf["rerank"]["enabled"] = not conf["rerank"]["enabled"]  # not part of training
    blocking, schedule = kt.changed_settings(saved, conf)
    assert blocking == ["train.crop_scale [0.6, 1.0] -> [0.5, 1.0]", "train.embed_dim 32 -> 16"]
    assert schedule == ["train.epochs 20 -> 30"]
    assert kt.changed_settings(saved, tiny_conf()) == ([], [])
