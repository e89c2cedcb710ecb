"""One policy for where the networks run, at what precision, and with how many decode workers.

Embedding, local matching and training all ask here, so a T4 gets the same answer everywhere:

- device: ``"auto"`` is the first GPU when torch sees one, else the CPU; ``"cpu"``, ``"cuda:1"`` name one.
- precision (``amp``): ``"auto"`` is bf16 on GPUs with bf16 units (compute capability 8.0, Ampere, and newer),
  fp16 on older ones (Kaggle's T4 is 7.5, the V100 7.0: they have no bf16 units) and fp32 on the CPU;
  ``"bf16"`` / ``"fp16"`` force one, ``"off"`` is fp32 everywhere.
- decode workers (``num_workers``): ``-1`` is auto: on a GPU one per core (at most 8), since the model waits on
  JPEG decoding; on a CPU all but two cores, since the model itself needs them (measured on 2 cores: decode
  workers made embedding 15% slower than decoding in-process). ``0`` decodes in the main process.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from .errors import ConfigError

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
BF16_MIN_CAPABILITY = (8, 0)  # Ampere: the first NVIDIA generation with bf16 tensor cores
MAX_WORKERS = 8  # more decode processes than this only add start-up time and memory


def resolve(device: str = "auto") -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; anything else is parsed by torch (``"cuda:1"``)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device {device!r} is not a torch device; use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: torch sees no CUDA GPU on this machine; use auto or cpu")
    return dev


def has_bf16(device: torch.device) -> bool:
    """Whether ``device`` is a GPU with bf16 units (compute capability >= 8.0)."""
    return device.type == "cuda" and tuple(torch.cuda.get_device_capability(device)) >= BF16_MIN_CAPABILITY


def amp_dtype(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``; None = fp32 (no autocast). See the module docstring."""
    if amp not in AMP_CHOICES:
        raise ConfigError(f"amp={amp!r}: choose one of {', '.join(AMP_CHOICES)}")
    if amp == "off" or device.type != "cuda":
        return None
    if amp == "auto":
        return torch.bfloat16 if has_bf16(device) else torch.float16
    if amp == "bf16" and not has_bf16(device):
        name = torch.cuda.get_device_name(device)
        raise ConfigError(f"amp=bf16: {name} has no bf16 units (compute capability "
                          f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}); use fp16 or auto")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def decode_workers(setting: int, device: torch.device, processes: int = 1) -> int:
    """Decode worker processes per process for ``setting`` (-1 = auto, see the module docstring)."""
    if setting is not None and setting >= 0:
        return int(setting)
    cores = max(1, (os.cpu_count() or 1) // max(1, processes))
    return min(MAX_WORKERS, cores) if device.type == "cuda" else max(0, cores - 2)


@dataclass(frozen=True)
class Policy:
    """Where and how a stage runs: ``device``, autocast ``dtype`` (None = fp32) and decode ``workers``."""

    device: torch.device
    dtype: torch.dtype | None
    workers: int

    def autocast(self):
        """The autocast context for this policy (a no-op at fp32)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @property
    def channels_last(self) -> bool:
        """NHWC convolutions pay off on GPUs only."""
        return self.device.type == "cuda"

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]


def policy(device: str = "auto", amp: str = "auto", workers: int = -1, processes: int = 1) -> Policy:
    """The Policy for a stage's ``device``, ``amp`` and ``num_workers`` settings."""
    dev = resolve(device)
    return Policy(dev, amp_dtype(dev, amp), decode_workers(workers, dev, processes))
