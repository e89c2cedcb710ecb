"""May a rerun into the same ``--out`` continue the interrupted run there? Its settings against the saved ones.

OUT/train_config.yaml holds the whole config of the run that left OUT/last/. A rerun compares its own config with
it, before any work:

- settings of how a run executes (devices, workers, precision, plots: ``RUNTIME``) may change freely;
- the schedule's length (``SCHEDULE``: more epochs) may change: the run continues and the cosine decay stretches;
- any other setting of the ``train``, ``embed`` or ``data`` section shapes the model, its data or its optimizer
  (``train.embed_dim``, the split, the learning rates the saved optimizer state would override, ...): the rerun
  stops with the keys that differ and how to start afresh. The other sections play no part in training.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..config import dump_config
from ..errors import ConfigError

CONFIG_FILE = "train_config.yaml"  # OUT/train_config.yaml: the whole config of the run
TRAINING_SECTIONS = ("train", "embed", "data")  # what a training run reads
RUNTIME = {  # how a run executes, not what it learns: free to change between a run and its resumption
    "train": ("device", "num_workers", "amp", "channels_last", "sync_bn", "plot", "preload", "validate_before",
              "resume"),
    "embed": ("batch_size", "num_workers", "device", "amp", "channels_last", "tta_flip", "tta_views", "also"),
    "data": ("check_images",),
}
SCHEDULE = {"train": ("epochs",)}  # the schedule's length: a rerun with more epochs trains on


def _show(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def changed_settings(saved: dict, conf: dict) -> tuple[list[str], list[str]]:
    """``(blocking, schedule)``: "section.key old -> new" for each training setting of ``conf`` that differs from
    ``saved``, split into those that forbid resuming and those of the schedule. Keys ``saved`` lacks are skipped."""
    conf = yaml.safe_load(dump_config(conf))  # tuples as lists, as the saved file holds them
    blocking, schedule = [], []
    for section in TRAINING_SECTIONS:
        old, new = saved.get(section) or {}, conf.get(section) or {}
        for key in sorted(set(old) & set(new)):
            if old[key] == new[key] or key in RUNTIME.get(section, ()):
                continue
            line = f"{section}.{key} {_show(old[key])} -> {_show(new[key])}"
            (schedule if key in SCHEDULE.get(section, ()) else blocking).append(line)
    return blocking, schedule


def check_resume(out: str | Path, conf: dict, state_file: str) -> list[str]:
    """Before a run into ``out``: raise ConfigError when OUT/last/ holds an interrupted run that ``conf`` cannot
    continue; return the schedule changes it continues with (empty when there is nothing to resume)."""
    out = Path(out)
    saved_path = out / CONFIG_FILE
    if not conf["train"]["resume"] or not (out / "last" / state_file).is_file() or not saved_path.is_file():
        return []
    try:
        saved = yaml.safe_load(saved_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{saved_path}: cannot read the interrupted run's settings ({exc}); use a new --out, or "
                          f"--set train.resume=false to start over in {out}") from None
    blocking, schedule = changed_settings(saved, conf)
    if blocking:
        raise ConfigError(
            f"{out / 'last'} holds an interrupted run made with other settings (saved in {saved_path}):\n  "
            + "\n  ".join(blocking)
            + f"\nThese change the model, its data or its optimizer, so that run cannot continue. Start afresh with a "
              f"new --out, or --set train.resume=false to train from scratch into {out} (replacing it); or give the "
              "saved values back to resume it. Only train.epochs (and how the run executes: devices, workers, "
              "precision) may change on a resume.")
    return schedule
