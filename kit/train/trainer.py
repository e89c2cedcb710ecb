"""One training run: the Trainer (setup, resume, epochs, validation, checkpoints) and ``train``, the entry
that ``kit train`` calls.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import embed
from ..config import dump_config
from ..device import policy as device_policy
from ..errors import ConfigError, DataError
from ..io import write_csv, write_text
from ..progress import progress_bar
from .arcface import ArcFaceHead
from .data import (RESIZE_MARGIN, Photos, holdout_split, identity_batches, one_thread, process_share, train_transform,
                   training_frame)
from .distributed import Dist, init_distributed
from .heldout import METRICS, heldout_metrics, plot_history
from .model import (STATE_FILE, Features, Net, accumulate_gradients, backbone_chain, cache_start, freeze_groups,
                    param_groups, save_checkpoint, save_state, set_train_mode)
from .resume import CONFIG_FILE, check_resume


class Trainer:
    """One training run (see the package docstring): ``Trainer(frame, tc, ec, out).fit()``.

    frame: the labelled photos (``training_frame``); tc, ec: the config's ``train`` and ``embed`` sections (the
    backbone, its weights and the embedding batch size come from ``embed``); out: the output folder; where: this
    process's place in a torchrun run (default: one process on the CPU); run_config: what OUT/train_config.yaml
    records, the whole merged config (default: just the two sections).
    """

    def __init__(self, frame: pd.DataFrame, tc: dict, ec: dict, out: str | Path, where: Dist | None = None,
                 run_config: dict | None = None):
        self.tc, self.ec, self.out = tc, ec, Path(out)
        self.run_config = run_config if run_config is not None else {"train": tc, "embed": ec}
        self.dist = where or Dist()
        torch.manual_seed(tc["seed"])
        self.train_df, self.val_df = holdout_split(frame, tc)
        keys = (self.train_df["dataset"].astype(str) + "/" + self.train_df["identity"].astype(str)).to_numpy()
        self.classes, self.labels = np.unique(keys, return_inverse=True)
        if len(self.classes) < 2:
            total = frame.groupby(["dataset", "identity"]).ngroups
            fix = ("lower train.val_identities (it holds out a share of the identities)" if total >= 2 else
                   "add photos of more identities")
            raise DataError(f"only {len(self.classes)} training identity ({total} in the data, "
                            f"{total - len(self.classes)} held out by train.val_identities={tc['val_identities']}); "
                            f"ArcFace needs at least 2: {fix}")
        self._check_batching()

        # model: the embed section's backbone and weights, a fresh neck unless a kit checkpoint brings one
        base = embed.load_descriptor({**ec, "neck": "none", "image_size": None})
        self.model_name = getattr(base.net.backbone, "pretrained_cfg", {}).get("architecture") or base.name
        embedder = embed.Embedder(self.model_name, tc["neck"], tc["embed_dim"])
        own, given = embedder.state_dict(), base.net.state_dict()
        if set(own) == set(given) and all(own[k].shape == given[k].shape for k in own):
            embedder.load_state_dict(given)  # a kit checkpoint with this neck: continue training all of it
        else:
            embedder.backbone.load_state_dict(base.net.backbone.state_dict())
        pre = base.preprocess
        self.size = int(tc["image_size"] or ec.get("image_size") or pre.size)
        self.mean, self.std, self.interpolation = list(pre.mean), list(pre.std), pre.interpolation
        head = ArcFaceHead(embedder.dim, len(self.classes), tc["subcenters"], tc["scale"], tc["margin"])

        # resume: the latest epoch's weights and state
        self.state: dict | None = None
        last = self.out / "last"
        if tc["resume"] and (last / STATE_FILE).is_file():
            self.state = torch.load(last / STATE_FILE, map_location="cpu", weights_only=True)
            if list(self.state["classes"]) != list(self.classes):
                raise ConfigError(f"{last}: that run trained other identities (different data or split); use a new "
                                  "--out, or --set train.resume=false to start over in this folder")
            from safetensors.torch import load_file

            try:  # check_resume compared the settings; this catches what they do not show (embed.model=auto)
                embedder.load_state_dict(load_file(str(last / "model.safetensors")))
                head.load_state_dict(self.state["head"])
            except RuntimeError as exc:
                raise ConfigError(f"{last}: that run's model has another shape than this one ({str(exc)[:300]}); "
                                  "use a new --out, or --set train.resume=false to start over in this folder") from None

        self.frozen = freeze_groups(embedder.backbone, tc["freeze_groups"])
        start = cache_start(embedder.backbone, self.size, self.model_name) if tc["cache_views"] else 0
        # device, autocast dtype and decode workers: kit.device's one policy for the device this process was given
        self.policy = device_policy(str(self.dist.device), tc["amp"], tc["num_workers"], self.dist.world)
        self.device = dev = self.policy.device
        self.net = Net(embedder, head, start).to(dev)
        if self.policy.channels_last and tc["channels_last"]:
            self.net = self.net.to(memory_format=torch.channels_last)
        if self.dist.world > 1 and dev.type == "cuda" and tc["sync_bn"]:
            from timm.layers import convert_sync_batchnorm  # keeps timm's BatchNormAct activations

            self.net = convert_sync_batchnorm(self.net)
            self.net._rest = backbone_chain(self.net.embedder.backbone)[start:] if start else []
        self.model: nn.Module = self.net
        if self.dist.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[dev.index] if dev.type == "cuda" else None)

        self.amp = self.policy.dtype
        # fp16 (a T4) needs loss scaling to keep small gradients from underflowing; bf16 and fp32 do not
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.amp == torch.float16)
        groups = param_groups(self.net, tc["lr_backbone"], tc["lr_head"], tc["weight_decay"])
        self.optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999))
        self.steps_per_epoch = int(tc["steps_per_epoch"] or max(1, math.ceil(len(self.train_df) / tc["batch_size"])))
        self.total_steps = self.steps_per_epoch * tc["epochs"]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: self.lr_factor(s))
        self.epoch, self.step, self.history, self.losses, self.best = 0, 0, [], [], None
        if self.state is not None:
            try:
                self.optimizer.load_state_dict(self.state["optimizer"])
            except ValueError as exc:  # other trainable parameters (train.freeze_groups)
                raise ConfigError(f"{last}: that run optimised other parameters ({exc}); use a new --out, or "
                                  "--set train.resume=false to start over in this folder") from None
            self.scheduler.load_state_dict(self.state["scheduler"])
            self.scaler.load_state_dict(self.state["scaler"])
            self.epoch, self.step = int(self.state["epoch"]), int(self.state["step"])
            self.history, self.losses = list(self.state["history"]), list(self.state["losses"])
            self.best = self.state["best"]

        self.workers = self.policy.workers
        self.photos = Photos(self.train_df["filepath"], self.labels,
                             train_transform(tc, self.size, self.mean, self.std, self.interpolation),
                             round(self.size * RESIZE_MARGIN))
        if tc["preload"] and self.epoch < tc["epochs"]:
            self.photos.preload(self.workers, show=self.dist.main)
        self.cache = self.val_cache = None
        if start and self.epoch < tc["epochs"]:
            self._build_cache()
        if self.state is not None:  # last: preloading and caching above draw from the generator too
            torch.set_rng_state(self.state["rng"])

    # ---------------------------------------------------------------------------------------- setup

    def _check_batching(self) -> None:
        tc, world = self.tc, self.dist.world
        b, accum, m = tc["batch_size"], tc["grad_accum"], tc["per_identity"]
        if b % (world * accum) or b // (world * accum) < 2:
            raise ConfigError(f"train.batch_size={b} must split into {world} process(es) x {accum} accumulation "
                              "step(s) of at least 2 images each; change train.batch_size or train.grad_accum")
        if m and b % m:
            raise ConfigError(f"train.batch_size={b} is not a multiple of train.per_identity={m}")

    def lr_factor(self, step: int) -> float:
        """Linear warm-up over ``warmup_epochs``, then cosine decay to ``min_lr_ratio`` at the last step."""
        warm = int(self.tc["warmup_epochs"] * self.steps_per_epoch)
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, self.total_steps - warm))
        lo = self.tc["min_lr_ratio"]
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))

    def margin_at(self, step: int) -> float:
        """The ArcFace margin grows linearly from 0 to ``margin`` over ``margin_warmup_epochs``."""
        warm = self.tc["margin_warmup_epochs"] * self.steps_per_epoch
        return self.tc["margin"] * (min(1.0, step / warm) if warm > 0 else 1.0)

    @torch.no_grad()
    def _run_prefix(self, dataset, desc: str) -> torch.Tensor:
        """[len(dataset), C, h, w] float16: the frozen prefix's output for each item of ``dataset``."""
        prefix = nn.Sequential(*backbone_chain(self.net.embedder.backbone)[:self.net.start]).eval()
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.ec["batch_size"],
                                             num_workers=self.workers, worker_init_fn=one_thread)
        parts = []
        with self.policy.autocast():
            for x, _ in progress_bar(loader, desc=desc, unit="batch", leave=False, disable=not self.dist.main):
                parts.append(prefix(x.to(self.device)).to("cpu", torch.float16))
        return torch.cat(parts)

    def _build_cache(self) -> None:
        views = [self._run_prefix(self.photos, f"cache view {v + 1}/{self.tc['cache_views']}")
                 for v in range(self.tc["cache_views"])]
        self.cache = torch.stack(views)  # [K, N, C, h, w] float16
        if self.val_df is not None:
            pre = embed.Preprocess(self.size, tuple(self.mean), tuple(self.std), self.interpolation)
            self.val_cache = self._run_prefix(embed.ImageDataset(self.val_df["filepath"].tolist(), pre), "cache val")
        if self.dist.main:
            mb = (self.cache.numel() + (0 if self.val_cache is None else self.val_cache.numel())) * 2 / 2**20
            tqdm.write(f"cached the frozen layers' output: {self.tc['cache_views']} view(s) x {self.cache.shape[1]} "
                       f"photos {tuple(self.cache.shape[2:])} ({mb:.0f} MB)")

    # ------------------------------------------------------------------------------------- training

    def _micro_batches(self, epoch: int) -> list[list[np.ndarray]]:
        """For each step of ``epoch``: this process's micro-batches, as row-index arrays."""
        tc, world, accum = self.tc, self.dist.world, self.tc["grad_accum"]
        rng = np.random.default_rng([tc["seed"], epoch])
        batches = identity_batches(self.labels, tc["batch_size"], tc["per_identity"], self.steps_per_epoch, rng)
        return [process_share(batch, world, self.dist.rank, accum) for batch in batches]

    def _loader(self, steps: list[list[np.ndarray]]):
        """Yields, per step, the list of (x, labels) micro-batches on the device."""
        dev = self.device
        if self.cache is not None:
            rng = np.random.default_rng([self.tc["seed"], self.epoch, 1])
            for micro in steps:
                out = []
                for rows in micro:
                    view = rng.integers(0, len(self.cache), len(rows))
                    x = self.cache[torch.from_numpy(view), torch.from_numpy(rows)].float()
                    out.append((x.to(dev), torch.from_numpy(self.labels[rows]).to(dev)))
                yield out
            return
        flat = [rows.tolist() for micro in steps for rows in micro]
        loader = torch.utils.data.DataLoader(self.photos, batch_sampler=flat, num_workers=self.workers,
                                             pin_memory=dev.type == "cuda", worker_init_fn=one_thread,
                                             persistent_workers=False)
        it = iter(loader)
        for micro in steps:
            out = []
            for _ in micro:
                x, y = next(it)
                x = x.to(dev, non_blocking=True)
                if self.policy.channels_last and self.tc["channels_last"]:
                    x = x.contiguous(memory_format=torch.channels_last)
                out.append((x, y.to(dev, non_blocking=True)))
            yield out

    def train_epoch(self) -> float:
        """One epoch of optimizer steps; returns the mean loss over all processes."""
        set_train_mode(self.net)
        steps = self._micro_batches(self.epoch)
        params = [p for p in self.net.parameters() if p.requires_grad]
        total, count = 0.0, 0
        bar = progress_bar(self._loader(steps), total=len(steps), desc=f"epoch {self.epoch}/{self.tc['epochs']}",
                   unit="step", leave=False, disable=not self.dist.main)
        for micro in bar:
            self.net.head.margin = self.margin_at(self.step)
            loss = accumulate_gradients(self.model, micro, self.amp, self.scaler)
            if self.tc["grad_clip"]:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(params, self.tc["grad_clip"])
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step += 1
            self.losses.append(loss)
            total, count = total + loss, count + 1
            bar.set_postfix(loss=f"{loss:.3f}")
        mean = torch.tensor([total, count], dtype=torch.float64, device=self.device)
        if self.dist.world > 1:
            dist.all_reduce(mean)
        return float(mean[0] / mean[1])

    def validate(self, neck: bool = True) -> dict[str, float]:
        """Metrics on the held-out split (main process only); ``neck=False`` scores the pooled backbone."""
        return heldout_metrics(self.val_embeddings(neck), self.val_df)

    @torch.no_grad()
    def val_embeddings(self, neck: bool = True) -> np.ndarray:
        """[len(val), D] float32 L2-normalised embeddings of the held-out photos, as the embed stage computes
        them (from the cached frozen layers' output in cache_views mode)."""
        self.net.eval()
        dim = self.net.embedder.dim if neck else self.net.embedder.backbone.num_features
        if self.val_cache is not None:
            embs = []
            for s in range(0, len(self.val_cache), self.ec["batch_size"]):
                x = self.val_cache[s:s + self.ec["batch_size"]].float().to(self.device)
                embs.append(F.normalize(self.net.embed(x, neck).float(), dim=1).cpu())
            emb = torch.cat(embs).numpy()
        else:
            pre = embed.Preprocess(self.size, tuple(self.mean), tuple(self.std), self.interpolation)
            amp = {None: "off", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.amp]
            descriptor = embed.Descriptor(Features(self.net.embedder, neck, dim), pre, self.model_name, "training",
                                          "training")
            # the embed stage asks kit.device itself, for the same device and precision as training
            # no test-time augmentation: the epochs' checkpoints are compared on plain embeddings, at plain cost
            econf = {**self.ec, "device": str(self.dist.device), "amp": amp, "tta_flip": False, "tta_views": 0,
                     "num_workers": self.workers, "channels_last": self.tc["channels_last"]}
            emb = embed.extract(descriptor, self.val_df["filepath"].tolist(), econf, desc="validate")
        return emb

    def checkpoint_info(self, scores: dict) -> dict:
        return {"model": self.model_name, "neck": self.tc["neck"], "embed_dim": self.net.embedder.dim,
                "image_size": self.size, "mean": self.mean, "std": self.std, "interpolation": self.interpolation,
                "kit_train": {"epoch": self.epoch, "metrics": scores, "classes": len(self.classes),
                              "train_images": len(self.train_df), "select": self.tc["select"]}}

    def _log(self, row: dict, is_best: bool) -> None:
        if not self.dist.main:
            return
        val = "  ".join(f"{k} {row[k]:.3f}" for k in METRICS if k in row and not math.isnan(row[k]))
        head = ("epoch 0 (backbone before training, pooled features)" if row["epoch"] == 0 else
                f"epoch {row['epoch']}/{self.tc['epochs']}  loss {row['loss']:.4f}  lr {row['lr']:.2e}  "
                f"margin {row['margin']:.2f}")
        tqdm.write(f"{head}  {val}  ({row['seconds']:.0f}s){'  *best' if is_best else ''}")

    def _write_history(self) -> None:
        write_csv(pd.DataFrame(self.history), self.out / "history.csv")

    def fit(self) -> dict:
        """Train the remaining epochs; returns {"best_epoch", "best": metrics, "history", "out"}."""
        tc, main = self.tc, self.dist.main
        if main:
            write_text(dump_config(self.run_config), self.out / CONFIG_FILE)
            tqdm.write(f"training {self.model_name} at {self.size} px on {len(self.train_df)} photos of "
                       f"{len(self.classes)} identities; validating on "
                       f"{0 if self.val_df is None else len(self.val_df)} "
                       f"photos of held-out identities; {self.steps_per_epoch} steps/epoch x {tc['epochs']} epochs; "
                       f"{self.dist.world} process(es) on {self.device}")
            if self.epoch:
                tqdm.write(f"resuming after epoch {self.epoch} from {self.out / 'last'}")
        if self.epoch == 0 and self.val_df is not None and tc["validate_before"]:
            t = time.perf_counter()
            if main:
                row = {"epoch": 0, "loss": float("nan"), "lr": 0.0, "margin": 0.0, **self.validate(neck=False),
                       "seconds": time.perf_counter() - t}
                self.history.append(row)
                self._log(row, False)
            self.dist.barrier()
        while self.epoch < tc["epochs"]:
            self.epoch += 1
            t = time.perf_counter()
            row = {"epoch": self.epoch, "loss": self.train_epoch(), "lr": self.scheduler.get_last_lr()[0],
                   "margin": self.net.head.margin}
            if main:
                scores = self.validate() if self.val_df is not None else {}
                row.update(scores, seconds=time.perf_counter() - t)
                self.history.append(row)
                value = scores.get(tc["select"], float("nan"))
                value = -math.inf if math.isnan(value) else value
                is_best = self.best is None or value > self.best["value"] or (
                    value == -math.inf and self.best["value"] == -math.inf)
                info = self.checkpoint_info(scores)
                save_checkpoint(self.out / "last", self.net.embedder, info)
                if is_best:
                    self.best = {"epoch": self.epoch, "value": value, "metrics": scores}
                    save_checkpoint(self.out, self.net.embedder, info)
                save_state(self.out / "last" / STATE_FILE, {
                    "epoch": self.epoch, "step": self.step, "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                    "head": self.net.head.state_dict(), "classes": list(self.classes), "best": self.best,
                    "history": self.history, "losses": self.losses, "rng": torch.get_rng_state()})
                self._write_history()
                self._log(row, is_best)
            self.dist.barrier()
        if main and tc["plot"] and self.history:
            plot_history(self.history, self.losses, self.steps_per_epoch, self.out / "curve.png")
        before = next((r[tc["select"]] for r in self.history if r["epoch"] == 0 and tc["select"] in r), math.nan)
        if main and self.best and self.best["value"] < before:  # False when either is NaN
            tqdm.write(f"warning: every epoch scored below the pretrained backbone on the held-out identities "
                       f"({tc['select']} {self.best['value']:.3f} vs {before:.3f} before training): embed with the "
                       "pretrained weights, or change the recipe (freeze more, lower lr_backbone, more data)")
        return {"best_epoch": None if self.best is None else self.best["epoch"],
                "best": None if self.best is None else self.best["metrics"], "history": self.history,
                "out": str(self.out), "rank": self.dist.rank}


def train(src: str | Path, conf: dict, out: str | Path, folders: bool = False) -> dict:
    """Fine-tune on ``src`` (a competition folder, or with ``folders`` a folder per identity) into ``out``; see the
    package docstring. ``conf``: the whole merged config (its ``train``, ``embed`` and ``data`` sections are read;
    all of it is saved as OUT/train_config.yaml). A run left in OUT/last/ is resumed when ``conf`` may continue it
    (kit.train.resume), else this stops before any work. Under torchrun every process calls this; only rank 0
    writes. Returns Trainer.fit's summary."""
    schedule = check_resume(out, conf, STATE_FILE)
    where = init_distributed(conf["train"]["device"])
    try:
        if schedule and where.main:
            tqdm.write(f"resuming {Path(out) / 'last'} with a changed schedule: {'; '.join(schedule)}")
        frame = training_frame(src, conf["data"]["check_images"], folders)
        from ..pipeline.descriptors import sections

        first = sections(conf["embed"])[0]  # several descriptors (embed.model=auto, embed.also): train the first
        return Trainer(frame, conf["train"], first, out, where, run_config=conf).fit()
    finally:
        if where.owns_group:
            dist.destroy_process_group()
