"""ArcFace fine-tuning: ``kit train DATA --config ... --out OUT``.

What is trained: the ``embed`` section's timm backbone with its weights (``embed.model``, ``embed.weights``;
a kit checkpoint continues training), a neck (``train.neck``: Linear + BatchNorm1d to ``train.embed_dim``)
and a sub-centre ArcFace head over the training identities. Only the backbone and the neck are kept.

Data: ``DATA`` is a competition folder (its labelled rows: database in 2025, train in 2026) or, with
``kit train --folders``, any folder with one sub-folder per identity (kit.data.scan_folders). A class is a
(dataset, identity) pair. A share ``train.val_identities`` of each dataset's identities is held out, never trained
on, and split open-set (kit.splits.open_set_split) into database, known queries and unknown queries; every epoch
reports R-1, mAP and the best open-set score sqrt(BAKS*BAUS) on it, and the best epoch by ``train.select`` is kept.

Batches are identity-balanced: ``batch_size / per_identity`` identities with ``per_identity`` photos each.
``batch_size`` counts the images of one optimizer step over all processes and accumulation steps, so a
recipe trains the same on 1 GPU, 2 GPUs or CPU; each forward pass sees ``batch_size / (GPUs * grad_accum)``.
Device, precision and decode workers follow kit.device's policy (``train.device``, ``train.amp``,
``train.num_workers``): bf16 on Ampere and newer, fp16 with loss scaling on older GPUs (a T4), fp32 on CPU.

Output folder ``OUT``::

    config.json, model.safetensors     the best epoch: a kit checkpoint, so --set embed.weights=OUT embeds with it
    last/                              the latest epoch's checkpoint and train_state.pt (optimizer, schedule,
                                       head, history): a rerun with the same OUT resumes from it, unless it
                                       changes more than train.epochs or how the run executes (kit.train.resume)
    history.csv, curve.png             one row per epoch (epoch 0: the backbone before training); the curves
    train_config.yaml                  the full config of the run

Every file is written atomically (kit.io) with the permissions the umask gives.

Multi-GPU: ``torchrun --nproc_per_node=2 -m kit train DATA --out OUT`` runs DistributedDataParallel (NCCL on
GPUs, gloo on CPU); the same command without torchrun runs one process.

The package, by responsibility (each module imports only those above it):

    arcface       the sub-centre ArcFace head and its logits
    model         the backbone as a chain, freezing, the trained Net, one step's gradients, checkpoint files
    data          the labelled photos, the held-out split, identity-balanced batches, augmentation
    distributed   this process's rank, world and device under torchrun
    heldout       held-out retrieval and open-set metrics, the training curves
    resume        whether a rerun into the same OUT may continue the run left there (its settings vs the saved ones)
    trainer       Trainer (one run) and train, the entry ``kit train`` calls
"""

from .arcface import ArcFaceHead, arcface_logits
from .data import (RESIZE_MARGIN, Photos, holdout_split, identity_batches, process_share, train_transform,
                   training_frame)
from .distributed import Dist, init_distributed
from .heldout import METRICS, heldout_metrics, plot_history
from .model import (CHAIN_SEQUENCES, STATE_FILE, Features, Net, accumulate_gradients, backbone_chain, cache_start,
                    chain_matches, freeze_groups, param_groups, save_checkpoint, save_state, set_train_mode)
from .resume import changed_settings, check_resume
from .trainer import Trainer, train

__all__ = [
    # arcface
    "ArcFaceHead", "arcface_logits",
    # model
    "CHAIN_SEQUENCES", "STATE_FILE", "Features", "Net", "accumulate_gradients", "backbone_chain", "cache_start",
    "chain_matches", "freeze_groups", "param_groups", "save_checkpoint", "save_state", "set_train_mode",
    # data
    "RESIZE_MARGIN", "Photos", "holdout_split", "identity_batches", "process_share", "train_transform",
    "training_frame",
    # distributed
    "Dist", "init_distributed",
    # heldout
    "METRICS", "heldout_metrics", "plot_history",
    # resume
    "changed_settings", "check_resume",
    # trainer
    "Trainer", "train",
]
