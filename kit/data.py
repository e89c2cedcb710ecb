"""Competition folders: read and validate ``metadata.csv``, open images robustly, import folder collections.

Two layouts are read (``df.attrs["layout"]`` says which one was found):

- ``"2025"`` (AnimalCLEF25): ``split`` in {database, query}; the task is to name each query's individual
  or say ``new_individual``.
- ``"2026"`` (AnimalCLEF26): ``split`` in {train, test}; the task is to cluster the test images into
  individuals.

Every problem in a folder is collected and reported together, one line each, naming the file, the row and
the fix, so a user fixes a broken ``metadata.csv`` in one pass instead of one error per run.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError, ImageError, KitWarning
from .io import read_csv_str, write_csv
from .schema import COLUMNS, FLANK_NAMES, LAYOUT_SPLITS, NEW_INDIVIDUAL, cluster_label, flank

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
MAX_LISTED = 20  # problems listed in one error; the rest are counted
# Columns read byte-exact, never stripped: a submission repeats them and the metric (Kaggle's, `kit score`) compares
# them exactly, so an identity " lynx_7" written as "lynx_7" would score as wrong on a right answer.
EXACT_COLUMNS = ("image_id", "identity")

# Decompression-bomb guard stays on, but camera-trap mosaics can be large: allow ~16k x 16k.
Image.MAX_IMAGE_PIXELS = 256_000_000


def _problems_error(title: str, problems: list[str]) -> DataError:
    shown = problems[:MAX_LISTED]
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    return DataError(f"{title}: {len(problems)} problem(s)\n  " + "\n  ".join(shown) + more)


def detect_layout(splits: pd.Series, where: str) -> str:
    """"2025" or "2026" from the values of the ``split`` column; a mix is an error."""
    seen = set(splits.unique())
    for layout, names in LAYOUT_SPLITS.items():
        if seen and seen <= set(names):
            return layout
    raise DataError(
        f"{where}: column 'split' has values {sorted(seen)}; expected database/query (AnimalCLEF 2025 layout) "
        "or train/test (AnimalCLEF 2026 layout), not a mix. Fix the split column."
    )


def check_image(path: str | Path) -> str | None:
    """Why ``path`` cannot be used as an image, or None. Cheap: reads the header and the JPEG end marker.

    A JPEG cut short (an interrupted download or copy) lacks its final FFD9 marker; catching that here
    costs a 64-byte read, where decoding it would fail mid-run an hour later.
    """
    p = Path(path)
    if not p.is_file():
        return "file not found"
    try:
        with Image.open(p) as im:
            fmt = im.format
            im.size  # noqa: B018 - forces the header parse
    except (UnidentifiedImageError, OSError) as exc:
        return f"not a readable image ({exc})"
    if fmt == "JPEG":
        with open(p, "rb") as fh:
            fh.seek(max(0, p.stat().st_size - 64))
            if b"\xff\xd9" not in fh.read():
                return "truncated JPEG (no end-of-image marker): re-download or re-copy the file"
    return None


def open_image(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Decode an image as 8-bit RGB, upright.

    Applies EXIF orientation (phones store portrait shots sideways); converts grayscale, CMYK, palette and
    16-bit modes; composites transparency onto white. ``min_side``: JPEGs may decode in draft mode at a
    reduced scale that still keeps both sides >= min_side, which is several times faster for large photos.
    Raises ImageError naming the file when it is missing, truncated or not an image.
    """
    try:
        im = Image.open(path)
        if min_side and im.format == "JPEG":
            w, h = im.size
            scale = min(w, h) / min_side
            if scale >= 2:
                im.draft("RGB", (int(w / scale) + 1, int(h / scale) + 1))
        im.load()
        im = ImageOps.exif_transpose(im)
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: image file not found; check the 'path' column of metadata.csv") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(
            f"{path}: cannot decode image ({exc}); the file is truncated or not an image. "
            "Re-download it, or remove its row from metadata.csv"
        ) from exc
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    if im.mode == "I;16" or im.mode == "I":
        arr = np.asarray(im, dtype=np.float32)
        arr = (255 * (arr - arr.min()) / max(1.0, float(arr.max() - arr.min()))).astype(np.uint8)
        im = Image.fromarray(arr)
    return im.convert("RGB")


def read_competition(root: str | Path, check_images: bool = True) -> pd.DataFrame:
    """Read and validate a competition folder.

    Returns the rows of ``root/metadata.csv`` (every column str; identity "" where unknown) plus
    ``filepath``: the absolute path of each image. ``df.attrs``: ``layout`` ("2025" | "2026"), ``root``.
    Raises DataError listing every problem: missing columns, duplicate image_id, missing or unreadable
    images, a query without a dataset, a labelled row without an identity.
    """
    root = Path(root)
    meta_path = root / "metadata.csv"
    if not meta_path.is_file():
        raise DataError(
            f"{meta_path} not found. A competition folder holds metadata.csv (columns {','.join(COLUMNS)}) "
            "and the images; make one with `kit import-folders` or `kit synth`."
        )
    try:
        df = read_csv_str(meta_path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{meta_path} is empty ({meta_path.stat().st_size} bytes): it needs the header line "
                        f"{','.join(COLUMNS)} and one row per image; rewrite it (or remake the folder with "
                        "`kit import-folders`)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{meta_path}: not a readable CSV ({exc}); fix the file's quoting or encoding") from exc
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{meta_path}: missing column(s) {missing}; the header must contain {','.join(COLUMNS)} "
            "(empty values are fine for date and orientation)"
        )
    if df.empty:
        raise DataError(f"{meta_path}: no rows; add one row per image")
    for col in COLUMNS:
        if col in EXACT_COLUMNS:  # kept byte-exact; a value of spaces only is empty
            df[col] = df[col].where(df[col].str.strip() != "", "")
        else:
            df[col] = df[col].str.strip()
    layout = detect_layout(df["split"], str(meta_path))
    labelled, unlabelled = LAYOUT_SPLITS[layout]

    problems: list[str] = []

    def row(i: int) -> str:  # CSV line number: header is line 1
        return f"{meta_path} line {i + 2} (image_id {df.at[i, 'image_id']!r})"

    dup = df["image_id"].duplicated(keep="first")
    problems += [f"{row(i)}: duplicate image_id; give every image a unique id" for i in np.flatnonzero(dup)]
    problems += [f"{row(i)}: empty image_id; fill it in" for i in np.flatnonzero(df["image_id"] == "")]
    problems += [
        f"{row(i)}: {labelled} row without an identity; fill in identity or mark the row split={unlabelled}"
        for i in np.flatnonzero((df["split"] == labelled) & (df["identity"] == ""))
    ]
    problems += [
        f"{row(i)}: {df.at[i, 'split'] or 'row'} without a dataset; fill in the dataset column"
        for i in np.flatnonzero(df["dataset"] == "")
    ]
    problems += [f"{row(i)}: empty path; give the image path relative to {root}"
                 for i in np.flatnonzero(df["path"] == "")]
    if layout == "2025":
        problems += [
            f"{row(i)}: query row has identity {df.at[i, 'identity']!r}; queries are unlabelled (clear it)"
            for i in np.flatnonzero((df["split"] == unlabelled) & (df["identity"] != ""))
        ]
    filepaths = []
    for i, p in enumerate(df["path"]):
        try:
            filepaths.append(str((root / p).resolve()) if p else "")
        except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
            filepaths.append("")
            problems.append(f"{row(i)}: {p}: the path cannot be resolved ({exc}); fix the symbolic link "
                            "or the path column")
    df["filepath"] = filepaths
    _warn_outside(df, root, row)
    if check_images:
        for i, fp in enumerate(df["filepath"]):
            if fp and (why := check_image(fp)):
                problems.append(f"{row(i)}: {df.at[i, 'path']}: {why}")
    if problems:
        raise _problems_error(f"{meta_path} is not a valid competition", problems)
    df.attrs["layout"] = layout
    df.attrs["root"] = str(root.resolve())
    return df


def _warn_outside(df: pd.DataFrame, root: Path, row) -> None:
    """Warn (once, the first rows named) when paths leave ``root`` (``../``, absolute): such a folder still runs
    here, but is not self-contained, so a copy, an archive or a Kaggle upload of it loses those photos. Read from
    the text, not the resolved path, so an images/ folder that is a symbolic link to another disk is no warning."""
    out = [i for i, p in enumerate(df["path"]) if p and (os.path.isabs(p) or
                                                        os.path.normpath(p).split(os.sep)[0] == os.pardir)]
    if out:
        shown = "; ".join(f"{row(i)}: {df.at[i, 'path']}" for i in out[:3])
        more = f" (and {len(out) - 3} more)" if len(out) > 3 else ""
        warnings.warn(f"{len(out)} path(s) lead outside the competition folder {root}: {shown}{more}. It runs, but a "
                      "copy or upload of the folder would lose those photos: move them inside it and give each path "
                      "relative to it", KitWarning, stacklevel=3)


def require_readable(paths, title: str) -> None:
    """Raise one DataError headed ``title`` that lists every path of ``paths`` check_image rejects, with why."""
    bad = [f"{p}: {why}" for p in paths if (why := check_image(p))]
    if bad:
        raise _problems_error(title, bad)


def labelled_mask(df: pd.DataFrame) -> np.ndarray:
    """[N] bool: rows with known identities (database in 2025, train in 2026)."""
    return (df["split"] == LAYOUT_SPLITS[df.attrs.get("layout", "2025")][0]).to_numpy()


def training_source(src: str | Path, folders: bool = False) -> str:
    """How ``kit train`` reads ``src``: "competition" (its metadata.csv's labelled rows) or, asked for with
    ``folders``, "folders" (one sub-folder per identity). DataError naming both fixes otherwise.

    A folder without metadata.csv is never taken for one sub-folder per identity unasked: a competition folder that
    lost its metadata.csv would train on its images/ folders as identities, queries included.
    """
    src = Path(src)
    meta_path = src / "metadata.csv"
    if folders and meta_path.is_file():
        raise DataError(f"{src} holds metadata.csv: it is a competition folder, not one sub-folder per identity; "
                        "drop --folders to train on its labelled rows")
    if folders:
        if not src.is_dir():
            raise DataError(f"{src} is not a folder; give --folders a folder with one sub-folder per identity")
        return "folders"
    if not meta_path.is_file():
        raise DataError(f"{meta_path} not found: kit train reads a competition folder's labelled rows from it. For a "
                        "folder with one sub-folder per identity, add --folders (each sub-folder is one identity), or "
                        f"turn it into a competition first: kit import-folders {src} OUT --dataset NAME")
    return "competition"


def _skip_reason(path: Path, skip: tuple[Path, ...]) -> str | None:
    """Why a sub-folder (or file) of a folder-per-identity collection is not an identity (an image), or None."""
    if path.name.startswith("."):  # .git, .ipynb_checkpoints, macOS ._photo.jpg resource forks
        return "hidden"
    if path.is_dir() and (path / "metadata.csv").is_file():
        return "a competition folder (holds metadata.csv), e.g. an earlier import-folders output"
    if path.is_dir() and any(path.resolve() == s for s in skip):
        return "the output folder"
    return None


def scan_folders(src: str | Path, skip: tuple[str | Path, ...] = ()) -> pd.DataFrame:
    """One row per image in a folder-per-identity collection: columns identity, source, orientation.

    Orientation is read from the file name ("left"/"right" in it, as in ``12_leftphoto.jpg``), since
    flank matters for re-ID and most collections encode it there if anywhere. Hidden folders and files, competition
    folders (an earlier output inside the source) and the folders of ``skip`` are left out, at any depth, and
    listed in ``attrs["skipped"]`` (``["<relative path> (<why>)", ...]``) and one warning.
    """
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src} is not a folder; give a folder with one sub-folder per identity")
    skip_abs = tuple(Path(p).resolve() for p in skip)
    rows, skipped, seen = [], [], set()

    def images(folder: Path):
        seen.add(folder.resolve())  # a symbolic link back up the tree is walked once, not forever
        for f in sorted(folder.iterdir()):
            if why := _skip_reason(f, skip_abs):
                skipped.append(f"{f.relative_to(src)} ({why})")
            elif f.is_dir():
                if f.resolve() not in seen:
                    yield from images(f)
            elif f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
                yield f

    for ident in sorted(p for p in src.iterdir() if p.is_dir()):
        if why := _skip_reason(ident, skip_abs):
            skipped.append(f"{ident.name} ({why})")
            continue
        for f in images(ident):
            rows.append({"identity": ident.name, "source": str(f), "orientation": FLANK_NAMES[flank([f.stem])[0]]})
    if skipped:
        warnings.warn(f"{src}: skipped {len(skipped)} (not identities or photos): {'; '.join(skipped[:5])}"
                      + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""), KitWarning, stacklevel=2)
    if not rows:
        raise DataError(f"{src}: no images found in its sub-folders; expect SRC/<identity>/<image>.jpg")
    out = pd.DataFrame(rows)
    out.attrs["skipped"] = skipped
    return out


def check_fractions(unknown_fraction: float, query_fraction: float) -> None:
    """DataError naming each option out of its range (NaN included): before any file is read or written."""
    bad = [f"--{name} {value:g}: expected a number >= 0 and < 1 ({what})"
           for name, value, what in [("unknown-fraction", unknown_fraction, "the share of identities that become "
                                      "new individuals; at least one identity must stay in the database"),
                                     ("query-fraction", query_fraction, "the share of each known identity's photos "
                                      "that become queries; at least one must stay in the database")]
           if not 0 <= value < 1]  # False for NaN too
    if bad:
        raise DataError("; ".join(bad) + ". Nothing was written: give e.g. --unknown-fraction 0.25 --query-fraction "
                        "0.3 (the defaults)")


def _place(src: str, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # no copy when on the same disk
    except OSError:
        shutil.copy2(src, dst)


def import_folders(
    src: str | Path,
    out: str | Path,
    dataset: str,
    unknown_fraction: float = 0.25,
    query_fraction: float = 0.3,
    seed: int = 0,
    layout: str = "2025",
    species: str = "",
) -> tuple[Path, dict]:
    """Turn ``SRC/<identity>/<image>`` into a competition folder at ``out`` with an open-set query split.

    2025 layout: a share ``unknown_fraction`` of identities become unknown (query-only) individuals, and
    ``query_fraction`` of each known identity's images become queries. 2026 layout: the same split, named
    train/test. ``solution.csv`` (the answer key) and ``sample_submission.csv`` are written beside it.
    Returns (``out``, counts: dataset, identities, new_identities, images, per split, skipped entries).
    """
    from .splits import open_set_split

    if layout not in LAYOUT_SPLITS:
        raise DataError(f"--layout {layout!r}: choose 2025 or 2026")
    check_fractions(unknown_fraction, query_fraction)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} exists and is not empty; give a new folder for the competition")
    found = scan_folders(src, skip=(out,))
    require_readable(found["source"], f"{src} holds unreadable images (remove or fix them)")
    found["dataset"] = dataset
    split = open_set_split(found, unknown_fraction=unknown_fraction, query_fraction=query_fraction, seed=seed)
    labelled_name, unlabelled_name = LAYOUT_SPLITS[layout]
    split["image_id"] = [f"{i:06d}" for i in range(len(split))]
    is_lab = split["split"] == "database"
    paths = []
    for r in split.itertuples():
        ext = Path(r.source).suffix.lower()
        if layout == "2026" and is_lab[r.Index]:
            rel = f"images/{dataset}/{labelled_name}/{r.identity}/{r.image_id}{ext}"
        else:
            rel = f"images/{dataset}/{labelled_name if is_lab[r.Index] else unlabelled_name}/{r.image_id}{ext}"
        paths.append(rel)
    split["path"] = paths
    meta = pd.DataFrame({
        "image_id": split["image_id"],
        "identity": np.where(is_lab, split["identity"], ""),
        "path": split["path"],
        "date": "",
        "orientation": split["orientation"],
        "species": species,
        "split": np.where(is_lab, labelled_name, unlabelled_name),
        "dataset": dataset,
    })
    out.mkdir(parents=True, exist_ok=True)
    for s, rel in zip(split["source"], split["path"]):
        _place(s, out / rel)
    q = split[~is_lab]
    if layout == "2025":
        solution = pd.DataFrame({"image_id": q["image_id"], "identity": q["identity"], "dataset": dataset,
                                 "new_identity": q["new_identity"]})
        sample = pd.DataFrame({"image_id": q["image_id"], "identity": NEW_INDIVIDUAL})
    else:
        solution = pd.DataFrame({"image_id": q["image_id"], "identity": q["identity"], "dataset": dataset})
        sample = pd.DataFrame({"image_id": q["image_id"],
                               "cluster": [cluster_label(dataset, i) for i in q["image_id"]]})
    write_csv(meta, out / "metadata.csv")
    write_csv(solution, out / "solution.csv")
    write_csv(sample, out / "sample_submission.csv")
    new = q.loc[q["new_identity"], "identity"].nunique()
    summary = {"dataset": dataset, "identities": int(split["identity"].nunique()), "new_identities": int(new),
               "images": len(split), labelled_name: int(is_lab.sum()), unlabelled_name: int((~is_lab).sum()),
               "skipped": len(found.attrs["skipped"])}
    return out, summary
