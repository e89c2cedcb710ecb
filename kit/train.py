"""ArcFace fine-tuning: ``kit train DATA --config ... --out OUT``.

What is trained: the ``embed`` section's timm backbone with its weights (``embed.model``, ``embed.weights``;
a kit checkpoint continues training), a neck (``train.neck``: Linear + BatchNorm1d to ``train.embed_dim``)
and a sub-centre ArcFace head over the training identities. Only the backbone and the neck are kept.

Data: ``DATA`` is a competition folder (its labelled rows: database in 2025, train in 2026) or any folder
with one sub-folder per identity (kit.data.scan_folders). A class is a (dataset, identity) pair. A share
``train.val_identities`` of each dataset's identities is held out, never trained on, and split open-set
(kit.splits.open_set_split) into database, known queries and unknown queries; every epoch reports R-1, mAP
and the best open-set score sqrt(BAKS*BAUS) on it, and the best epoch by ``train.select`` is kept.

Batches are identity-balanced: ``batch_size / per_identity`` identities with ``per_identity`` photos each.
``batch_size`` counts the images of one optimizer step over all processes and accumulation steps, so a
recipe trains the same on 1 GPU, 2 GPUs or CPU; each forward pass sees ``batch_size / (GPUs * grad_accum)``.

Output folder ``OUT``::

    config.json, model.safetensors     the best epoch: a kit checkpoint, so --set embed.weights=OUT embeds with it
    last/                              the latest epoch's checkpoint and train_state.pt (optimizer, schedule,
                                       head, history): a rerun with the same OUT resumes from it
    history.csv, curve.png             one row per epoch (epoch 0: the backbone before training); the curves
    train_config.yaml                  the full config of the run

Multi-GPU: ``torchrun --nproc_per_node=2 -m kit train DATA --out OUT`` runs DistributedDataParallel (NCCL on
GPUs, gloo on CPU); the same command without torchrun runs one process.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import embed, metrics, retrieve
from .device import amp_dtype, decode_workers
from .device import resolve as resolve_device
from .data import labelled_mask, open_image, read_competition, require_readable, scan_folders
from .errors import ConfigError, DataError
from .io import atomic_path, write_csv, write_json, write_text
from .openset import choose_threshold
from .splits import open_set_split

STATE_FILE = "train_state.pt"  # optimizer, schedule, head and history of the latest epoch (in OUT/last/)
RESIZE_MARGIN = 1.15  # photos are squashed to this x image_size before the random crop takes image_size
CHAIN_SEQUENCES = ("blocks", "stages", "layers")  # timm children that hold a backbone's stages in order
METRICS = ("R-1", "R-5", "mAP", "score")


# ---------------------------------------------------------------------------------------------- ArcFace


def arcface_logits(cos: torch.Tensor, labels: torch.Tensor, margin: float, scale: float) -> torch.Tensor:
    """ArcFace logits: ``scale * cos(theta_y + margin)`` for each row's true class, ``scale * cos(theta_j)``
    for the others.

    cos: [B, C] cosine between each embedding and each class centre; labels: [B] int64 class index.
    Where ``theta_y + margin > pi`` the angle has no room for the margin (cos would rise again with
    theta), and the logit is ``cos(theta_y) - margin * sin(margin)`` instead (InsightFace's rule: still
    decreasing in theta, with a penalty). Returns [B, C] float32 (float64 for float64 input).
    """
    cos = _at_least_fp32(cos).clamp(-1.0 + 1e-6, 1.0 - 1e-6)  # keeps d/dcos of sqrt(1 - cos^2) finite
    target = cos.gather(1, labels[:, None])  # [B, 1] cos(theta_y)
    sin = (1.0 - target * target).sqrt()
    phi = target * math.cos(margin) - sin * math.sin(margin)  # cos(theta_y + m)
    phi = torch.where(target > math.cos(math.pi - margin), phi, target - margin * math.sin(margin))
    return scale * cos.scatter(1, labels[:, None], phi)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))  # half -> float32; float64 stays


class ArcFaceHead(nn.Module):
    """Sub-centre ArcFace over ``n_classes`` identities: ``[B, D]`` embeddings -> ``[B, C]`` logits.

    ``weight``: [C * subcenters, D]; rows ``c * subcenters ... c * subcenters + subcenters - 1`` are the
    centres of class c, and a class's cosine is that of its nearest centre (subcenters=1: plain ArcFace).
    ``margin`` is an attribute so a schedule can change it between steps.
    """

    def __init__(self, dim: int, n_classes: int, subcenters: int = 1, scale: float = 30.0, margin: float = 0.4):
        super().__init__()
        self.n_classes, self.subcenters, self.scale, self.margin = n_classes, subcenters, scale, margin
        self.weight = nn.Parameter(torch.empty(n_classes * subcenters, dim))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        """[B, C] float32 (at least): cosine of each embedding to its nearest centre of each class."""
        emb = _at_least_fp32(emb)
        cos = F.linear(F.normalize(emb, dim=1), F.normalize(self.weight.to(emb.dtype), dim=1))
        return cos.view(len(emb), self.n_classes, self.subcenters).amax(dim=2)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return arcface_logits(self.cosine(emb), labels, self.margin, self.scale)


# ------------------------------------------------------------------------------------------------ model


def backbone_chain(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's top-level children in order, its stage sequence (``blocks``/``stages``/``layers``)
    unrolled. For most timm CNNs running them in turn is the forward pass (``chain_matches`` checks)."""
    chain: list[nn.Module] = []
    for name, child in backbone.named_children():
        chain += list(child) if name in CHAIN_SEQUENCES and isinstance(child, nn.Sequential) else [child]
    return chain


@torch.no_grad()
def chain_matches(backbone: nn.Module, size: int) -> bool:
    """Whether running ``backbone_chain`` in turn gives ``backbone(x)`` (eval mode, random [2, 3, size, size])."""
    was_training = backbone.training
    backbone.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    want, got = backbone(x), x
    try:
        for module in backbone_chain(backbone):
            got = module(got)
    except Exception:  # noqa: BLE001 - any failure means "not a chain" (e.g. a ViT block fed a feature map)
        return False
    finally:
        backbone.train(was_training)
    return got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-4)


def freeze_groups(backbone: nn.Module, n: int) -> list[str]:
    """Freeze timm's first ``n`` coarse parameter groups (group 0 is the stem, then stage by stage).

    Their parameters stop training and their BatchNorm statistics stay fixed (see ``set_train_mode``).
    Returns the frozen parameter names. ``n=0`` freezes nothing.
    """
    if n <= 0:
        return []
    name = type(backbone).__name__
    if not hasattr(backbone, "group_matcher"):
        raise ConfigError(f"train.freeze_groups={n}: the timm model {name} defines no parameter groups; "
                          "set train.freeze_groups=0")
    from timm.models import group_parameters

    groups = group_parameters(backbone, backbone.group_matcher(coarse=True))
    ids = sorted(groups)
    if n >= len(ids):
        raise ConfigError(f"train.freeze_groups={n}: {name} has {len(ids)} parameter groups; freeze at most "
                          f"{len(ids) - 1} so something trains")
    frozen = sorted(p for g in ids[:n] for p in groups[g])
    params = dict(backbone.named_parameters())
    for p in frozen:
        params[p].requires_grad_(False)
    return frozen


def set_train_mode(net: nn.Module) -> None:
    """``net.train()``, except normalisation layers whose parameters are all frozen keep their statistics."""
    net.train()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


class Net(nn.Module):
    """What is trained, and what DDP wraps: an Embedder and an ArcFace head; ``forward(x, labels)`` gives
    the batch's mean ArcFace cross-entropy.

    x: [B, 3, H, W] images, or with ``start > 0`` the cached output of the backbone's first ``start`` chain
    modules (frozen), which the forward pass then skips. labels: [B] int64.
    """

    def __init__(self, embedder: embed.Embedder, head: ArcFaceHead, start: int = 0):
        super().__init__()
        self.embedder, self.head, self.start = embedder, head, start
        self._rest = backbone_chain(embedder.backbone)[start:] if start else []  # a plain list: not re-registered

    def embed(self, x: torch.Tensor, neck: bool = True) -> torch.Tensor:
        """[B, D] embeddings (not normalised); ``neck=False``: the backbone's pooled features."""
        if self.start:
            for module in self._rest:
                x = module(x)
        else:
            x = self.embedder.backbone(x)
        return self.embedder.neck(x) if neck else x

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.head(self.embed(x), labels), labels)


def accumulate_gradients(model: nn.Module, micro_batches: list, amp_dtype: torch.dtype | None = None,
                         scaler: torch.amp.GradScaler | None = None) -> float:
    """Forward and backward over the micro-batches ``[(x, labels), ...]`` of one optimizer step.

    The gradients left in the parameters are those of the mean loss over the step's images (micro-batches
    are equal in size); under DDP they also average over processes, synchronising once, on the last
    micro-batch. Returns this process's mean loss.
    """
    n, total = len(micro_batches), 0.0
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    for i, (x, y) in enumerate(micro_batches):
        sync = contextlib.nullcontext() if (i == n - 1 or not ddp) else model.no_sync()
        with sync:
            with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = model(x, y)
            scaled = loss / n
            (scaler.scale(scaled) if scaler is not None and scaler.is_enabled() else scaled).backward()
        total += float(loss.detach())
    return total / n


# ------------------------------------------------------------------------------------------------- data


def training_frame(src: str | Path, check_images: bool = True) -> pd.DataFrame:
    """Labelled photos to train on: columns ``filepath``, ``identity``, ``dataset`` (and the metadata's).

    src: a competition folder (metadata.csv; its database/train rows) or a folder per identity (the folder's
    name becomes the dataset name).
    """
    src = Path(src)
    if (src / "metadata.csv").is_file():
        meta = read_competition(src, check_images=check_images)
        frame = meta[labelled_mask(meta)].reset_index(drop=True)
    elif src.is_dir():
        found = scan_folders(src)
        if check_images:
            require_readable(found["source"], f"{src} holds unreadable images (remove or fix them)")
        frame = pd.DataFrame({"image_id": [f"{i:06d}" for i in range(len(found))], "identity": found["identity"],
                              "orientation": found["orientation"], "dataset": src.resolve().name,
                              "filepath": found["source"]})
    else:
        raise DataError(f"{src}: not a folder; give a competition folder (with metadata.csv) or a folder "
                        "with one sub-folder per identity")
    if frame.empty:
        raise DataError(f"{src}: no labelled photos to train on (a competition needs database/train rows)")
    return frame


def holdout_split(frame: pd.DataFrame, tc: dict) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """``(train, val)``: identity-disjoint. ``val`` holds a share ``tc["val_identities"]`` of each dataset's
    identities, split open-set (columns split in {database, query} and new_identity); None when 0."""
    if not tc["val_identities"]:
        return frame.reset_index(drop=True), None
    held = open_set_split(frame, unknown_fraction=tc["val_identities"], query_fraction=0.0,
                          seed=tc["seed"])["new_identity"].to_numpy()
    val = open_set_split(frame[held], unknown_fraction=tc["val_unknown"], query_fraction=tc["val_query_fraction"],
                         seed=tc["seed"] + 1)
    return frame[~held].reset_index(drop=True), val.reset_index(drop=True)


def identity_batches(labels: np.ndarray, batch_size: int, per_identity: int, n_batches: int,
                     rng: np.random.Generator) -> np.ndarray:
    """[n_batches, batch_size] int64 row indices, identity-balanced.

    Each batch holds ``batch_size // per_identity`` identities, drawn in turn from reshuffled passes over all
    identities (so each is seen about equally often, whatever its photo count), with ``per_identity``
    photos each, drawn in turn from reshuffled passes over its photos (an identity with fewer repeats some;
    augmentation makes the copies differ). ``per_identity=0``: reshuffled passes over all photos.
    """
    labels = np.asarray(labels)
    if per_identity <= 0:
        passes = -(-n_batches * batch_size // len(labels))
        stream = np.concatenate([rng.permutation(len(labels)) for _ in range(passes)])
        return stream[:n_batches * batch_size].reshape(n_batches, batch_size).astype(np.int64)
    ids = np.unique(labels)
    members = {c: np.flatnonzero(labels == c) for c in ids}
    queues: dict = {c: [] for c in ids}
    id_queue: list = []
    out = np.empty((n_batches, batch_size), np.int64)
    per_batch = batch_size // per_identity
    for b in range(n_batches):
        chosen = []
        for _ in range(per_batch):
            if not id_queue:
                id_queue = list(rng.permutation(ids))
            chosen.append(id_queue.pop())
        rows = []
        for c in chosen:
            while len(queues[c]) < per_identity:
                queues[c] += list(rng.permutation(members[c]))
            rows += queues[c][:per_identity]
            del queues[c][:per_identity]
        out[b] = rows
    return out


def process_share(batch: np.ndarray, world: int, rank: int, accum: int) -> list[np.ndarray]:
    """This process's micro-batches of one optimizer step's ``batch`` [B]: the batch is cut into
    ``world * accum`` equal chunks and accumulation step k of process ``rank`` takes chunk ``k * world + rank``
    (so one process with accum=2 sees exactly the chunks that two processes see with accum=1)."""
    size = len(batch) // (world * accum)
    return [batch[(k * world + rank) * size:(k * world + rank + 1) * size] for k in range(accum)]


def train_transform(tc: dict, size: int, mean, std, interpolation: str):
    """PIL photo -> augmented [3, size, size] float tensor: squash, small rotation, random-resized crop,
    optional mirror, colour jitter, normalise, random erasing (each switched off by its config key)."""
    from torchvision import transforms as T

    interp = T.InterpolationMode.BICUBIC if interpolation == "bicubic" else T.InterpolationMode.BILINEAR
    side = round(size * RESIZE_MARGIN)
    steps: list = [T.Resize((side, side), interpolation=interp, antialias=True)]
    if tc["rotation"]:
        steps.append(T.RandomRotation(tc["rotation"], interpolation=T.InterpolationMode.BILINEAR,
                                      fill=[round(255 * m) for m in mean]))
    steps.append(T.RandomResizedCrop(size, scale=tuple(tc["crop_scale"]), ratio=tuple(tc["crop_ratio"]),
                                     interpolation=interp, antialias=True))
    if tc["hflip"]:
        steps.append(T.RandomHorizontalFlip(tc["hflip"]))
    if tc["color_jitter"]:
        steps.append(T.ColorJitter(tc["color_jitter"], tc["color_jitter"], tc["color_jitter"], 0.0))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    if tc["random_erase"]:
        steps.append(T.RandomErasing(p=tc["random_erase"], value=0))
    return T.Compose(steps)


class Photos(torch.utils.data.Dataset):
    """Training photos: item i is ``(transform(photo i), label i)``.

    ``preload(side)`` decodes every photo once and keeps it in memory squashed to ``side x side`` and
    JPEG-compressed (about 20 kB each at 260 px), so epochs skip decoding the full-size originals.
    """

    def __init__(self, paths, labels, transform, side: int):
        self.paths, self.labels, self.transform, self.side = list(paths), np.asarray(labels), transform, side
        self.blobs: list[bytes] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int):
        from PIL import Image

        if self.blobs is not None:
            import io

            return Image.open(io.BytesIO(self.blobs[i])).convert("RGB")
        return open_image(self.paths[i], min_side=self.side)

    def __getitem__(self, i: int):
        return self.transform(self.image(i)), int(self.labels[i])

    def preload(self, workers: int, show: bool = True) -> None:
        loader = torch.utils.data.DataLoader(_Squashed(self.paths, self.side), batch_size=None, num_workers=workers,
                                             worker_init_fn=_one_thread)
        self.blobs = list(tqdm(loader, desc="preload photos", unit="photo", leave=False, disable=not show))


class _Squashed(torch.utils.data.Dataset):
    def __init__(self, paths, side):
        self.paths, self.side = paths, side

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        import io

        from PIL import Image

        buf = io.BytesIO()
        open_image(self.paths[i], min_side=self.side).resize((self.side, self.side), Image.BICUBIC).save(
            buf, "JPEG", quality=95)
        return buf.getvalue()


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    """This process's place in a (torchrun) run; world=1 without torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this module initialised the process group (and tears it down)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_distributed(device: str = "auto") -> Dist:
    """Read torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK) and join the process group: NCCL when the
    processes use GPUs, gloo on CPU. One GPU per process (cuda:LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    cuda = resolve_device(device).type == "cuda"
    if cuda:
        if world > 1 and local >= torch.cuda.device_count():
            raise ConfigError(f"{world} processes but {torch.cuda.device_count()} GPU(s): run torchrun with "
                              f"--nproc_per_node={torch.cuda.device_count()}")
        dev = torch.device(f"cuda:{local}" if world > 1 or device == "auto" else device)
        if dev.index is not None:
            torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        owns = True
    rank = dist.get_rank() if world > 1 else 0
    return Dist(rank, world, local, dev, owns)


# ------------------------------------------------------------------------------------------ evaluation


def evaluate(emb: np.ndarray, val: pd.DataFrame) -> dict[str, float]:
    """Retrieval and open-set metrics of embeddings on an open-set split, mean over datasets.

    emb: [len(val), D] float32 L2-normalised, row i for ``val`` row i; val: columns identity, dataset,
    split (database/query), new_identity. R-1, R-5 and mAP are over known queries against the database;
    score is the best sqrt(BAKS*BAUS) over thresholds on the best-identity cosine (openset.choose_threshold;
    NaN without both known and unknown queries).
    """
    per: list[dict] = []
    for _, part in val.groupby("dataset", sort=True):
        rows = val.index.get_indexer(part.index)  # positions in val (and emb)
        is_db = (part["split"] == "database").to_numpy()
        if is_db.all() or not is_db.any():
            continue
        db_labels = part["identity"].to_numpy()[is_db]
        truth = part["identity"].to_numpy()[~is_db]
        new = part["new_identity"].to_numpy(bool)[~is_db]
        sims = retrieve.similarity(emb[rows[~is_db]], emb[rows[is_db]])  # [Q, N]
        entry = {k: float("nan") for k in METRICS}
        if (~new).any():
            entry.update(metrics.rank_k(retrieve.ranked_labels(sims[~new], db_labels, 5), truth[~new], ks=(1, 5)))
            entry["mAP"] = metrics.mean_average_precision(sims[~new], db_labels, truth[~new])
        if (~new).any() and new.any():
            identities, id_scores = retrieve.identity_scores(sims, db_labels)
            top = id_scores.argmax(axis=1)
            _, entry["score"] = choose_threshold(id_scores[np.arange(len(top)), top], identities[top] == truth,
                                                 new, truth)
        per.append(entry)
    return {k: _nanmean([e[k] for e in per]) for k in METRICS}


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


class _Features(nn.Module):
    """An Embedder's embedding of images (``neck=False``: its pooled backbone features), as the module that
    kit.embed.extract runs."""

    def __init__(self, embedder: embed.Embedder, neck: bool, dim: int):
        super().__init__()
        self.embedder, self.neck, self.dim = embedder, neck, dim

    def forward(self, x):
        x = self.embedder.backbone(x)
        return self.embedder.neck(x) if self.neck else x


# ---------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(folder: Path, embedder: embed.Embedder, info: dict) -> None:
    """A kit checkpoint: ``model.safetensors`` (the Embedder's state dict) and ``config.json`` (model, neck,
    embed_dim, image_size, mean, std, interpolation, and ``kit_train``: epoch and metrics). Written through
    temporary files and renames; config.json last, so a folder with one always has its weights."""
    from safetensors.torch import save_file

    with atomic_path(folder / "model.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in embedder.state_dict().items()}, tmp)
    write_json(info, folder / embed.KIT_CHECKPOINT)


def _save_state(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


# --------------------------------------------------------------------------------------------- trainer


class Trainer:
    """One training run (see the module docstring). ``Trainer(frame, conf, out).fit()``."""

    def __init__(self, frame: pd.DataFrame, conf: dict, out: str | Path, where: Dist | None = None):
        self.conf, self.tc, self.out = conf, conf["train"], Path(out)
        self.dist = where or Dist()
        tc, ec = self.tc, conf["embed"]
        torch.manual_seed(tc["seed"])
        self.train_df, self.val_df = holdout_split(frame, tc)
        keys = (self.train_df["dataset"].astype(str) + "/" + self.train_df["identity"].astype(str)).to_numpy()
        self.classes, self.labels = np.unique(keys, return_inverse=True)
        if len(self.classes) < 2:
            raise DataError(f"only {len(self.classes)} training identity; ArcFace needs at least 2 "
                            "(lower train.val_identities or add data)")
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

            embedder.load_state_dict(load_file(str(last / "model.safetensors")))
            head.load_state_dict(self.state["head"])

        self.frozen = freeze_groups(embedder.backbone, tc["freeze_groups"])
        start = self._cache_start(embedder) if tc["cache_views"] else 0
        dev = self.dist.device
        self.net = Net(embedder, head, start).to(dev)
        if dev.type == "cuda" and tc["channels_last"]:
            self.net = self.net.to(memory_format=torch.channels_last)
        if self.dist.world > 1 and dev.type == "cuda" and tc["sync_bn"]:
            from timm.layers import convert_sync_batchnorm  # keeps timm's BatchNormAct activations

            self.net = convert_sync_batchnorm(self.net)
            self.net._rest = backbone_chain(self.net.embedder.backbone)[start:] if start else []
        self.model: nn.Module = self.net
        if self.dist.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[dev.index] if dev.type == "cuda" else None)

        self.amp = amp_dtype(dev, tc["amp"])
        # fp16 (a T4) needs loss scaling to keep small gradients from underflowing; bf16 and fp32 do not
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.amp == torch.float16)
        self.optimizer = torch.optim.AdamW(self._param_groups(), betas=(0.9, 0.999))
        self.steps_per_epoch = int(tc["steps_per_epoch"] or max(1, math.ceil(len(self.train_df) / tc["batch_size"])))
        self.total_steps = self.steps_per_epoch * tc["epochs"]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: self.lr_factor(s))
        self.epoch, self.step, self.history, self.losses, self.best = 0, 0, [], [], None
        if self.state is not None:
            self.optimizer.load_state_dict(self.state["optimizer"])
            self.scheduler.load_state_dict(self.state["scheduler"])
            self.scaler.load_state_dict(self.state["scaler"])
            self.epoch, self.step = int(self.state["epoch"]), int(self.state["step"])
            self.history, self.losses = list(self.state["history"]), list(self.state["losses"])
            self.best = self.state["best"]

        self.workers = self._workers()
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

    def _cache_start(self, embedder: embed.Embedder) -> int:
        """Index of the first chain module that trains: the frozen prefix before it is run once and cached."""
        chain = backbone_chain(embedder.backbone)
        start = 0
        while start < len(chain) and not any(p.requires_grad for p in chain[start].parameters()):
            start += 1
        if start == 0:
            raise ConfigError("train.cache_views needs a frozen prefix to cache: set train.freeze_groups >= 1 "
                              "(or train.cache_views=0)")
        if not chain_matches(embedder.backbone, self.size):
            raise ConfigError(f"train.cache_views: {self.model_name}'s forward pass is not the chain of its child "
                              "modules (most timm CNNs are; transformers are not); set train.cache_views=0")
        return start

    def _param_groups(self) -> list[dict]:
        tc = self.tc
        groups = []
        for part, lr in ((self.net.embedder.backbone, tc["lr_backbone"]),
                         (nn.ModuleList([self.net.embedder.neck, self.net.head]), tc["lr_head"])):
            params = [p for p in part.parameters() if p.requires_grad]
            decay = [p for p in params if p.ndim > 1]
            plain = [p for p in params if p.ndim <= 1]  # biases and norm weights: no weight decay
            groups += [{"params": decay, "lr": lr, "weight_decay": tc["weight_decay"]},
                       {"params": plain, "lr": lr, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def _workers(self) -> int:
        return decode_workers(self.tc["num_workers"], self.dist.device, self.dist.world)

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
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.conf["embed"]["batch_size"],
                                             num_workers=self.workers, worker_init_fn=_one_thread)
        parts = []
        with torch.autocast(self.dist.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            for x, _ in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not self.dist.main):
                parts.append(prefix(x.to(self.dist.device)).to("cpu", torch.float16))
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
        dev = self.dist.device
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
                                             pin_memory=dev.type == "cuda", worker_init_fn=_one_thread,
                                             persistent_workers=False)
        it = iter(loader)
        for micro in steps:
            out = []
            for _ in micro:
                x, y = next(it)
                x = x.to(dev, non_blocking=True)
                if dev.type == "cuda" and self.tc["channels_last"]:
                    x = x.contiguous(memory_format=torch.channels_last)
                out.append((x, y.to(dev, non_blocking=True)))
            yield out

    def train_epoch(self) -> float:
        """One epoch of optimizer steps; returns the mean loss over all processes."""
        set_train_mode(self.net)
        steps = self._micro_batches(self.epoch)
        params = [p for p in self.net.parameters() if p.requires_grad]
        total, count = 0.0, 0
        bar = tqdm(self._loader(steps), total=len(steps), desc=f"epoch {self.epoch}/{self.tc['epochs']}",
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
        mean = torch.tensor([total, count], dtype=torch.float64, device=self.dist.device)
        if self.dist.world > 1:
            dist.all_reduce(mean)
        return float(mean[0] / mean[1])

    def validate(self, neck: bool = True) -> dict[str, float]:
        """Metrics on the held-out split (main process only); ``neck=False`` scores the pooled backbone."""
        return evaluate(self.val_embeddings(neck), self.val_df)

    @torch.no_grad()
    def val_embeddings(self, neck: bool = True) -> np.ndarray:
        """[len(val), D] float32 L2-normalised embeddings of the held-out photos, as the embed stage computes
        them (from the cached frozen layers' output in cache_views mode)."""
        self.net.eval()
        dim = self.net.embedder.dim if neck else self.net.embedder.backbone.num_features
        if self.val_cache is not None:
            embs = []
            for s in range(0, len(self.val_cache), self.conf["embed"]["batch_size"]):
                x = self.val_cache[s:s + self.conf["embed"]["batch_size"]].float().to(self.dist.device)
                embs.append(F.normalize(self.net.embed(x, neck).float(), dim=1).cpu())
            emb = torch.cat(embs).numpy()
        else:
            pre = embed.Preprocess(self.size, tuple(self.mean), tuple(self.std), self.interpolation)
            amp = {None: "off", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.amp]
            descriptor = embed.Descriptor(_Features(self.net.embedder, neck, dim), pre, self.model_name, "training",
                                      "training")
            econf = {**self.conf["embed"], "device": str(self.dist.device), "amp": amp, "tta_flip": False,
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
            from .config import dump_config

            write_text(dump_config(self.conf), self.out / "train_config.yaml")
            tqdm.write(f"training {self.model_name} at {self.size} px on {len(self.train_df)} photos of "
                       f"{len(self.classes)} identities; validating on "
                       f"{0 if self.val_df is None else len(self.val_df)} "
                       f"photos of held-out identities; {self.steps_per_epoch} steps/epoch x {tc['epochs']} epochs; "
                       f"{self.dist.world} process(es) on {self.dist.device}")
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
                _save_state(self.out / "last" / STATE_FILE, {
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


def plot_history(history: list[dict], losses: list[float], steps_per_epoch: int, path: Path) -> None:
    """Training loss per step (and per-epoch mean) beside the validation metrics per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = pd.DataFrame(history)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    if losses:
        x = np.arange(1, len(losses) + 1) / steps_per_epoch
        a.plot(x, losses, color="tab:blue", alpha=0.3, lw=0.8, label="step")
        trained = h[h["epoch"] > 0]
        a.plot(trained["epoch"], trained["loss"], "o-", color="tab:blue", label="epoch mean")
    a.set(xlabel="epoch", ylabel="ArcFace loss", title="training loss")
    a.legend()
    for name in METRICS:
        if name in h and h[name].notna().any():
            b.plot(h["epoch"], h[name], "o-", label=name)
    b.set(xlabel="epoch (0 = backbone before training)", ylabel="held-out identities", title="validation",
          ylim=(0, 1.02))
    b.grid(alpha=0.3)
    if b.lines:
        b.legend()
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")  # the .tmp suffix says nothing about the format
    finally:
        plt.close(fig)


def train(src: str | Path, conf: dict, out: str | Path) -> dict:
    """Fine-tune on ``src`` (a competition folder or a folder per identity) into ``out``; see the module
    docstring. Under torchrun every process calls this; only rank 0 writes. Returns Trainer.fit's summary."""
    where = init_distributed(conf["train"]["device"])
    try:
        frame = training_frame(src, conf["data"]["check_images"])
        return Trainer(frame, conf, out, where).fit()
    finally:
        if where.owns_group:
            dist.destroy_process_group()
