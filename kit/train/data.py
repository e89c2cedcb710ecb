"""What training sees: the labelled photos, the identity-disjoint held-out split, identity-balanced batches
cut into each process's micro-batches, and the augmented photos (optionally preloaded in memory).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data import labelled_mask, open_image, read_competition, require_readable, scan_folders, training_source
from ..errors import DataError
from ..progress import progress_bar
from ..splits import open_set_split

RESIZE_MARGIN = 1.15  # photos are squashed to this x image_size before the random crop takes image_size


def training_frame(src: str | Path, check_images: bool = True, folders: bool = False) -> pd.DataFrame:
    """Labelled photos to train on: columns ``filepath``, ``identity``, ``dataset`` (and the metadata's).

    src: a competition folder (metadata.csv; its database/train rows), or with ``folders`` a folder with one
    sub-folder per identity (the folder's name becomes the dataset name); kit.data.training_source says which.
    """
    src = Path(src)
    if training_source(src, folders) == "folders":
        found = scan_folders(src)
        if check_images:
            require_readable(found["source"], f"{src} holds unreadable images (remove or fix them)")
        frame = pd.DataFrame({"image_id": [f"{i:06d}" for i in range(len(found))], "identity": found["identity"],
                              "orientation": found["orientation"], "dataset": src.resolve().name,
                              "filepath": found["source"]})
    else:
        meta = read_competition(src, check_images=check_images)
        frame = meta[labelled_mask(meta)].reset_index(drop=True)
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
                                             worker_init_fn=one_thread)
        self.blobs = list(progress_bar(loader, desc="preload photos", unit="photo", leave=False, disable=not show))


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


def one_thread(_: int) -> None:
    """DataLoader worker_init_fn: each decode worker is one process; its own thread pool would only fight the
    model for cores."""
    torch.set_num_threads(1)
