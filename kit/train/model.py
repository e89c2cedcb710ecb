"""What is trained and what is kept: the backbone as a chain of modules (for freezing and caching a frozen
prefix), the trained ``Net`` (Embedder + ArcFace head), one optimizer step's gradients, and the files a
checkpoint folder holds.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import embed
from ..errors import ConfigError
from ..io import atomic_path, write_json
from .arcface import ArcFaceHead

STATE_FILE = "train_state.pt"  # optimizer, schedule, head and history of the latest epoch (in OUT/last/)
CHAIN_SEQUENCES = ("blocks", "stages", "layers")  # timm children that hold a backbone's stages in order


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


def cache_start(backbone: nn.Module, size: int, name: str) -> int:
    """Index of the first chain module that trains: the frozen prefix before it is run once and cached.

    ConfigError when nothing is frozen, or when the backbone (timm model ``name``) is not its chain at ``size`` px.
    """
    chain = backbone_chain(backbone)
    start = 0
    while start < len(chain) and not any(p.requires_grad for p in chain[start].parameters()):
        start += 1
    if start == 0:
        raise ConfigError("train.cache_views needs a frozen prefix to cache: set train.freeze_groups >= 1 "
                          "(or train.cache_views=0)")
    if not chain_matches(backbone, size):
        raise ConfigError(f"train.cache_views: {name}'s forward pass is not the chain of its child "
                          "modules (most timm CNNs are; transformers are not); set train.cache_views=0")
    return start


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


def param_groups(net: Net, lr_backbone: float, lr_head: float, weight_decay: float) -> list[dict]:
    """AdamW parameter groups of ``net``'s trainable parameters: the backbone at ``lr_backbone``, the neck and
    head at ``lr_head``; weight decay on matrices and kernels only. Empty groups are left out."""
    groups = []
    for part, lr in ((net.embedder.backbone, lr_backbone),
                     (nn.ModuleList([net.embedder.neck, net.head]), lr_head)):
        params = [p for p in part.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim > 1]
        plain = [p for p in params if p.ndim <= 1]  # biases and norm weights: no weight decay
        groups += [{"params": decay, "lr": lr, "weight_decay": weight_decay},
                   {"params": plain, "lr": lr, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


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


class Features(nn.Module):
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


def save_state(path: Path, state: dict) -> None:
    """``state`` (tensors, lists, dicts) as a torch file, atomically: a resume never reads half a file."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
