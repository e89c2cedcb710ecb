"""Synthetic AnimalCLEF competitions, for tests and the offline demo.

``make_competition(out)`` writes a folder laid out like a real AnimalCLEF competition: ``metadata.csv``,
``images/...`` JPEGs, ``sample_submission.csv``, and the answer key ``solution.csv`` (for metrics and tests
only). Layout "2025": database/query, unknown individuals among the queries; "2026": train/test for
clustering, plus a test-only dataset. The datasets mimic AnimalCLEF's: SynLynx (spotted fur seen from the
side; each flank has its own pattern and `orientation` says which is shown), SynSalamander (yellow blotches
on black, from above, any rotation), SynTurtle (a shell of individual polygonal scutes; top, left or right
view) and, in 2026 only, SynLizard (rimmed dark blotches on sand; test images only, like TexasHornedLizards).

An individual is told apart only by its coat or shell, drawn from (seed, dataset, identity). Every photo varies
pose (rotation, scale, perspective), lighting, blur and noise. Backgrounds are the trap: each dataset has a few
camera-trap scenes shared by all individuals, and an individual is mostly photographed at its home trap, so
matching backgrounds looks useful on validation while it confuses individuals.

Same arguments give byte-identical files (per-image seeded numpy Generators, fixed JPEG settings).
Defaults (55 identities per dataset, 3 to 9 photos each, 160 px) write 1,005 images (2025) or 1,332 (2026)
in 10 to 15 s on 2 shared cores; tests' tiny settings (identities=4, images_per_identity=(2, 3), image_size=64)
take 0.1 to 0.4 s.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps

from .errors import ConfigError, DataError
from .progress import progress_bar
from .schema import COLUMNS, NEW_INDIVIDUAL, cluster_label

__all__ = ["DATASETS", "LAYOUTS", "make_competition"]


# Per dataset: `index` fixes its random streams whatever subset is generated; orientations and their odds;
# `spin` is the in-plane rotation range in degrees (180 = any angle); `night` the share of grey IR photos;
# `start` the first camera-trap day (dates fall in the 4 years after it); `scenery` and `ground` (dark and
# light colour) describe the background scenes.
DATASETS = {
    "SynLynx": dict(index=0, species="lynx", orientations={"left": 0.5, "right": 0.5}, spin=12, night=0.2,
                    start="2016-03-01", scenery="trunks", ground=((45, 60, 35), (150, 150, 95))),
    "SynSalamander": dict(index=1, species="salamander", orientations={"top": 1.0}, spin=180, night=0.0,
                          start="2019-04-01", scenery="leaves", ground=((50, 40, 30), (135, 115, 80))),
    "SynTurtle": dict(index=2, species="loggerhead turtle", orientations={"left": 0.3, "right": 0.3, "top": 0.4},
                      spin=20, night=0.0, start="2012-06-01", scenery="stones", ground=((20, 70, 90), (120, 175, 170))),
    "SynLizard": dict(index=3, species="texas horned lizard", orientations={"top": 1.0}, spin=180, night=0.0,
                      start="2021-05-01", scenery="stones", ground=((120, 95, 70), (215, 190, 150))),
}
LAYOUTS = {"2025": ("SynLynx", "SynSalamander", "SynTurtle"),
           "2026": ("SynLynx", "SynSalamander", "SynTurtle", "SynLizard")}
_TEST_ONLY = {"2026": ("SynLizard",)}  # datasets with no labelled images at all, like TexasHornedLizards
_N_TRAPS = 4  # background scenes (camera traps) per dataset
_HOME_TRAP = 0.7  # chance a photo is taken at the individual's home trap rather than any trap
_NO_DATE = 0.05  # share of rows with an empty date, as in the real metadata
_JPEG = dict(quality=90, subsampling=2, optimize=False)  # fixed, so outputs are byte-identical
# Streams of random numbers, kept apart so that e.g. changing the split plan never changes a coat.
_META, _COAT, _TRAP, _SHOT = 1, 2, 3, 4
# Turtle side views reuse the top-view render: rotate the head sideways, foreshorten the lateral axis.
_VIEWS = {"top": (0.0, 1.0), "left": (-90.0, 0.62), "right": (90.0, 0.62)}


def make_competition(out, *, layout="2025", seed=0, identities=55, images_per_identity=(3, 9),
                     unknown_fraction=0.25, query_fraction=0.3, image_size=160, datasets=None) -> Path:
    """Write a synthetic competition into the new folder `out` and return its path.

    identities: individuals per dataset; images_per_identity: (min, max) photos each, inclusive;
    unknown_fraction: share of individuals that have no labelled photo (2025 queries / 2026 test only);
    query_fraction: share of a labelled individual's photos (its latest) held out, keeping at least one;
    image_size: side of the square JPEGs in px; datasets: names from DATASETS (None = all of the layout).
    Raises DataError if `out` exists and is not empty, ConfigError for a bad argument. Writes into a
    temporary sibling folder and renames it, so a failure never leaves a half-written competition.
    """
    names = _check_args(layout, seed, identities, images_per_identity, unknown_fraction, query_fraction,
                        image_size, datasets)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists and is not empty; make_competition writes a fresh folder. "
                        "Fix: pass a new path, or delete that folder first.")
    rows = []
    for name in names:
        for row in _plan(name, layout, seed, identities, images_per_identity, unknown_fraction, query_fraction):
            row["image_id"] = f"{len(rows):06d}"
            folder = f"{row['split']}/{row['identity']}" if row["split"] == "train" else row["split"]
            row["path"] = f"images/{name}/{folder}/{row['image_id']}.jpg"
            rows.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the competition is an ordinary folder
    try:
        _render_all(tmp, rows, seed, image_size)
        _write_tables(tmp, rows, layout)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_args(layout, seed, identities, per_id, unknown_fraction, query_fraction, image_size, datasets):
    """Return the dataset names to generate, or raise ConfigError naming the bad argument and the fix."""
    whole = lambda x, low: isinstance(x, (int, np.integer)) and x >= low  # noqa: E731
    names = LAYOUTS.get(layout, ()) if datasets is None else tuple(datasets)
    checks = {  # message: whether the argument is fine, in the order they are reported
        f"layout={layout!r}: use one of {sorted(LAYOUTS)}": layout in LAYOUTS,
        f"datasets={datasets!r}: give distinct names from {list(DATASETS)}":
            0 < len(set(names)) == len(names) and set(names) <= set(DATASETS),
        f"seed={seed!r}: use an integer >= 0": whole(seed, 0),
        f"identities={identities!r}: use an integer >= 1": whole(identities, 1),
        f"images_per_identity={per_id!r}: use (min, max) with 1 <= min <= max":
            len(per_id) == 2 and whole(per_id[0], 1) and whole(per_id[1], per_id[0]),
        f"unknown_fraction={unknown_fraction!r}: use a number in [0, 1]": 0 <= unknown_fraction <= 1,
        f"query_fraction={query_fraction!r}: use a number in [0, 1]": 0 <= query_fraction <= 1,
        f"image_size={image_size!r}: use an integer >= 32": whole(image_size, 32),
    }
    for message, ok in checks.items():
        if not ok:
            raise ConfigError(f"make_competition: {message}.")
    return names


def _rng(*keys) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in keys])


def _share(fraction, n) -> int:
    """round(fraction * n), kept within 1..n-1 when 0 < fraction < 1 so that both kinds exist."""
    return 0 if fraction <= 0 else n if fraction >= 1 else max(0, min(max(round(fraction * n), 1), n - 1))


def _plan(name, layout, seed, identities, per_id, unknown_fraction, query_fraction) -> list[dict]:
    """Rows of one dataset (no image_id/path yet), shuffled so that row order leaks neither identity nor split."""
    spec = DATASETS[name]
    rng = _rng(seed, _META, spec["index"])
    n_new = identities if name in _TEST_ONLY.get(layout, ()) else _share(unknown_fraction, identities)
    new = set(rng.permutation(identities)[:n_new].tolist())
    held, kept = ("query", "database") if layout == "2025" else ("test", "train")
    views, odds = list(spec["orientations"]), list(spec["orientations"].values())
    start = dt.date.fromisoformat(spec["start"])
    rows = []
    for i in range(identities):
        k = int(rng.integers(per_id[0], per_id[1] + 1))
        days = np.sort(rng.integers(0, 4 * 365, size=k))  # the latest sightings are held out, as in a season split
        n_held = min(k - 1, max(1, round(query_fraction * k))) if k > 1 and query_fraction > 0 else 0
        n_held = k if i in new else n_held
        home = int(rng.integers(_N_TRAPS))
        for j in range(k):
            trap = home if rng.random() < _HOME_TRAP else int(rng.integers(_N_TRAPS))
            date = "" if rng.random() < _NO_DATE else (start + dt.timedelta(days=int(days[j]))).isoformat()
            rows.append(dict(identity=f"{name}_{i:04d}", individual=i, shot=j, new=i in new, trap=trap,
                             date=date, orientation=str(rng.choice(views, p=odds)), species=spec["species"],
                             split=held if j >= k - n_held else kept, dataset=name))
    return [rows[o] for o in rng.permutation(len(rows))]


def _write_tables(root: Path, rows: list[dict], layout: str) -> None:
    """metadata.csv (identity blank on held-out rows), sample_submission.csv and the answer key solution.csv."""
    full = pd.DataFrame(rows)
    held = full["split"].isin(["query", "test"])
    meta = full[COLUMNS].copy()
    meta.loc[held, "identity"] = ""
    meta.to_csv(root / "metadata.csv", index=False, lineterminator="\n")
    key = full.loc[held]
    if layout == "2025":
        solution = key[["image_id", "identity", "dataset"]].assign(new_identity=key["new"].astype(bool))
        sample = pd.DataFrame({"image_id": key["image_id"], "identity": NEW_INDIVIDUAL})
    else:
        solution = key[["image_id", "identity", "dataset"]]
        sample = pd.DataFrame({"image_id": key["image_id"],
                               "cluster": [cluster_label(d, i) for d, i in zip(key["dataset"], key["image_id"])]})
    solution.to_csv(root / "solution.csv", index=False, lineterminator="\n")
    sample.to_csv(root / "sample_submission.csv", index=False, lineterminator="\n")


def _render_all(root: Path, rows: list[dict], seed: int, size: int) -> None:
    """Draw every individual once, then photograph it for each of its rows; write JPEGs under `root`."""
    by_individual: dict[tuple, list[dict]] = {}
    for row in rows:
        by_individual.setdefault((row["dataset"], row["individual"]), []).append(row)
    traps = {name: [_background(_rng(seed, _TRAP, spec["index"], t), int(size * 1.2), spec) for t in range(_N_TRAPS)]
             for name, spec in DATASETS.items()}  # a few ms each
    with progress_bar(total=len(rows), desc="synth images", unit="img") as bar:
        for (name, i), shots in by_individual.items():
            spec = DATASETS[name]
            looks = _DRAW[name](_rng(seed, _COAT, spec["index"], i), size)
            for row in shots:
                look = looks.get(row["orientation"], looks.get("top"))
                view = (0.0, 1.0) if row["orientation"] in looks else _VIEWS[row["orientation"]]
                rng = _rng(seed, _SHOT, spec["index"], i, row["shot"])
                photo = _photograph(rng, look, view, traps[name][row["trap"]], spec, size)
                (root / row["path"]).parent.mkdir(parents=True, exist_ok=True)
                photo.save(root / row["path"], "JPEG", **_JPEG)
                bar.update()


# ---- drawing: silhouettes in unit coordinates, ("e", box) ellipses and ("p", points) polygons ----

def _mirror(parts):
    """The same parts reflected left-right, for bilaterally symmetric animals seen from above."""
    return [("e", (1 - b[2], b[1], 1 - b[0], b[3])) if kind == "e" else ("p", [(1 - x, y) for x, y in b])
            for kind, b in parts]


def _shape(parts, c: int) -> Image.Image:
    """An 'L' mask of side c with the parts filled, drawn at twice the size so that edges are antialiased."""
    mask = Image.new("L", (2 * c, 2 * c))
    draw = ImageDraw.Draw(mask)
    for kind, b in parts:
        if kind == "e":
            draw.ellipse([v * 2 * c for v in b], fill=255)
        else:
            draw.polygon([(x * 2 * c, y * 2 * c) for x, y in b], fill=255)
    return mask.resize((c, c), Image.BOX)


_LYNX = [  # facing right: body, neck, head, ears, bobtail, four legs
    ("e", (0.20, 0.36, 0.76, 0.66)), ("p", [(0.62, 0.42), (0.74, 0.28), (0.84, 0.36), (0.74, 0.58)]),
    ("e", (0.70, 0.24, 0.92, 0.46)), ("p", [(0.72, 0.31), (0.74, 0.13), (0.79, 0.27)]),
    ("p", [(0.82, 0.27), (0.87, 0.12), (0.89, 0.31)]), ("p", [(0.23, 0.43), (0.12, 0.39), (0.11, 0.47), (0.23, 0.52)]),
    ("p", [(0.62, 0.55), (0.70, 0.55), (0.71, 0.90), (0.63, 0.90)]),
    ("p", [(0.53, 0.56), (0.60, 0.56), (0.59, 0.88), (0.53, 0.88)]),
    ("p", [(0.22, 0.48), (0.36, 0.52), (0.33, 0.90), (0.26, 0.90)]),
    ("p", [(0.35, 0.56), (0.43, 0.56), (0.43, 0.88), (0.37, 0.88)])]
_LYNX_MARKS = [("e", (0.10, 0.39, 0.15, 0.48)), ("e", (0.835, 0.30, 0.86, 0.325)), ("e", (0.905, 0.365, 0.925, 0.39)),
               ("p", [(0.74, 0.13), (0.745, 0.07), (0.76, 0.17)]), ("p", [(0.87, 0.12), (0.875, 0.06), (0.88, 0.16)])]
# ^ tail tip, eye, nose and ear tufts: the same on every lynx
_SAL_LEGS = [("p", [(0.41, 0.27), (0.27, 0.20), (0.24, 0.24), (0.40, 0.34)]), ("e", (0.21, 0.17, 0.28, 0.24)),
             ("p", [(0.41, 0.55), (0.27, 0.65), (0.29, 0.69), (0.42, 0.62)]), ("e", (0.24, 0.64, 0.31, 0.71))]
_SALAMANDER = [("e", (0.39, 0.07, 0.61, 0.27)), ("e", (0.38, 0.19, 0.62, 0.66))] + _SAL_LEGS + _mirror(_SAL_LEGS) + [
    ("e", (x - r, y - r, x + r, y + r)) for x, y, r in zip(  # a tapering, curving tail
        0.5 + 0.08 * np.sin(np.linspace(0, 2.5, 16)), np.linspace(0.62, 0.95, 16), np.linspace(0.09, 0.015, 16))]
_FLIPPERS = [("p", [(0.30, 0.28), (0.12, 0.33), (0.03, 0.50), (0.13, 0.48), (0.30, 0.42)]),
             ("p", [(0.33, 0.72), (0.22, 0.84), (0.28, 0.88), (0.39, 0.78)])]
_TURTLE = [("e", (0.42, 0.04, 0.58, 0.24)), ("p", [(0.47, 0.80), (0.53, 0.80), (0.50, 0.91)])] \
    + _FLIPPERS + _mirror(_FLIPPERS)
_SHELL = (0.5, 0.52, 0.25, 0.32)  # centre x, y and half axes of the carapace ellipse
_LIZ_SIDE = [("p", [(0.37, 0.23), (0.29, 0.10), (0.41, 0.18)]), ("p", [(0.44, 0.15), (0.42, 0.05), (0.47, 0.13)]),
             ("p", [(0.32, 0.36), (0.18, 0.30), (0.17, 0.34), (0.31, 0.42)]),
             ("p", [(0.31, 0.62), (0.18, 0.72), (0.20, 0.75), (0.33, 0.68)])]  # horns and legs
_LIZARD = [("e", (0.36, 0.12, 0.64, 0.34)), ("e", (0.27, 0.27, 0.73, 0.76)),
           ("p", [(0.44, 0.72), (0.56, 0.72), (0.5, 0.96)])] + _LIZ_SIDE + _mirror(_LIZ_SIDE) + [
    ("p", [(0.5 + side * 0.23 * f * np.cos(a), 0.515 + 0.245 * f * np.sin(a))  # spiky scales fringe the body
           for a, f in ((t - 0.08, 0.95), (t, 1.08), (t + 0.08, 0.95))])
    for side in (-1, 1) for t in np.linspace(-1.2, 1.2, 9)]


def _noise(rng, size: int, cells: int) -> np.ndarray:
    """Smooth value noise in [0, 1]: [size, size] float32."""
    grid = rng.random((cells, cells), dtype=np.float32)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC))


def _blobs(rng, mask: Image.Image, n: int, radius: tuple, lobes: tuple = (1, 3)) -> np.ndarray:
    """n irregular blobs (unions of ellipses) centred on the mask: [c, c] float32 in [0, 1]."""
    c = mask.size[0]
    layer = Image.new("L", (2 * c, 2 * c))
    draw = ImageDraw.Draw(layer)
    ys, xs = np.nonzero(np.asarray(mask) > 127)
    for k in rng.integers(len(xs), size=n):
        for _ in range(int(rng.integers(lobes[0], lobes[1] + 1))):
            r = rng.uniform(*radius) * 2 * c
            rx, (dx, dy) = r * rng.uniform(0.6, 1.5), rng.normal(0, 0.7 * r, 2)
            x, y = 2 * xs[k] + dx, 2 * ys[k] + dy
            draw.ellipse([x - rx, y - r, x + rx, y + r], fill=255)
    return np.asarray(layer.resize((c, c), Image.BOX), np.float32) / 255


def _paint(base, marks: np.ndarray, colour) -> np.ndarray:
    """Blend `colour` into `base` [c, c, 3] float32 where marks [c, c] is 1."""
    return base * (1 - marks[..., None]) + np.asarray(colour, np.float32) * marks[..., None]


def _finish(rgb: np.ndarray, mask: Image.Image) -> Image.Image:
    """Premultiplied RGBa render; edges darkened so that the body reads as rounded, not flat."""
    shade = np.asarray(mask.filter(ImageFilter.GaussianBlur(0.04 * mask.size[0])), np.float32)[..., None] / 255
    rgba = np.dstack([np.clip(rgb * (0.5 + 0.5 * shade), 0, 255), np.asarray(mask)]).astype(np.uint8)
    return Image.fromarray(rgba).convert("RGBa")  # premultiplied, so that warping does not fringe the edges


def _fur(rng, c: int, colour, grain: float) -> np.ndarray:
    """A flat colour with grain: [c, c, 3] float32."""
    return np.asarray(colour, np.float32) * (1 + grain * (_noise(rng, c, c // 6) - 0.5))[..., None]


# Each _draw_* returns an individual's looks, {orientation or "top": premultiplied RGBa image of side c}.

def _draw_lynx(rng, c):
    mask = _shape(_LYNX, c)
    belly = np.clip((np.linspace(0, 1, c, dtype=np.float32) - 0.52) / 0.12, 0, 1)[:, None] * 0.7
    fur = _fur(rng, c, rng.uniform(0.9, 1.1, 3) * (175, 138, 98), 0.3)
    coat = _paint(fur, np.broadcast_to(belly, (c, c)), (225, 210, 185))
    coat = _paint(coat, np.asarray(_shape(_LYNX_MARKS, c), np.float32) / 255, (35, 28, 22))
    looks = {}
    for flank in ("right", "left"):  # drawn independently: the two flanks of a lynx do not match
        spots = _blobs(rng, mask, int(rng.integers(70, 110)), (0.006, 0.015), (1, 3))
        look = _finish(_paint(coat, spots * 0.85, (55, 38, 25)), mask)
        looks[flank] = look if flank == "right" else ImageOps.mirror(look)
    return looks


def _draw_salamander(rng, c):
    mask = _shape(_SALAMANDER, c)
    blotches = _blobs(rng, mask, int(rng.integers(12, 22)), (0.012, 0.03), (2, 5))
    yellow = rng.uniform(0.9, 1.05) * np.array((240, 195, 35))
    return {"top": _finish(_paint(_fur(rng, c, (28, 25, 24), 0.5), blotches, yellow), mask)}


def _draw_turtle(rng, c):
    """Scutes are Voronoi cells of jittered seeds inside the shell, ringed by marginal scutes."""
    cx, cy, ax, ay = _SHELL
    ramp = (np.arange(c, dtype=np.float32) + 0.5) / c
    u, v = (ramp[None, :] - cx) / ax, (ramp[:, None] - cy) / ay  # shell coordinates: its outline is the unit circle
    vertebral = [(0, t) for t in (-0.62, -0.31, 0, 0.31, 0.62)]
    seeds = np.array(vertebral + [(s * 0.5, t) for s in (-1, 1) for t in (-0.45, -0.15, 0.15, 0.45)])  # + costal
    seeds = (seeds + rng.normal(0, 0.07, seeds.shape)).astype(np.float32)
    cell = np.hypot(u[..., None] - seeds[:, 0], v[..., None] - seeds[:, 1]).argmin(-1)  # [c, c]
    edges = np.sort(rng.uniform(-np.pi, np.pi, 24)).astype(np.float32)
    cell = np.where(np.hypot(u, v) > 0.84, len(seeds) + np.searchsorted(edges, np.arctan2(v, u)) % 24, cell)
    border = (cell != np.roll(cell, 1, 0)) | (cell != np.roll(cell, 1, 1))
    n = len(seeds) + 24
    tones = rng.uniform(0.55, 1.25, (n, 1)) * (160, 85, 35) * rng.uniform(0.9, 1.1, (n, 3))
    centre = np.vstack([seeds, np.zeros((24, 2), np.float32)])[cell]
    spokes = np.arctan2(v - centre[..., 1], u - centre[..., 0]) * rng.integers(5, 10)
    streak = np.sin(spokes + rng.uniform(0, 6.3)) > 0.5  # the radiating streaks of a loggerhead's scutes
    shell = _paint(tones[cell].astype(np.float32), (streak * 0.35 + border * 0.6).astype(np.float32), (45, 25, 12))
    limbs, carapace = _shape(_TURTLE, c), _shape([("e", (cx - ax, cy - ay, cx + ax, cy + ay))], c)
    skin = _paint(_fur(rng, c, (150, 130, 105), 0.4), _blobs(rng, limbs, 40, (0.006, 0.012), (1, 1)), (95, 70, 50))
    body = Image.fromarray(np.maximum(np.asarray(limbs), np.asarray(carapace)))
    on_shell = np.asarray(carapace, np.float32)[..., None] / 255
    return {"top": _finish(shell * on_shell + skin * (1 - on_shell), body)}


def _draw_lizard(rng, c):
    mask = _shape(_LIZARD, c)
    blotches = _blobs(rng, mask, int(rng.integers(8, 14)), (0.02, 0.04), (1, 3))
    grown = Image.fromarray((blotches * 255).astype(np.uint8)).filter(ImageFilter.MaxFilter(5))
    rims = np.asarray(grown, np.float32) / 255
    ramp = (np.arange(c, dtype=np.float32) + 0.5) / c
    stripe = 0.7 * ((np.abs(ramp[None, :] - 0.5) < 0.012) & (np.abs(ramp[:, None] - 0.5) < 0.2)).astype(np.float32)
    fur = _fur(rng, c, rng.uniform(0.9, 1.1) * np.array((190, 158, 118)), 0.5)
    coat = _paint(fur, np.maximum(rims, stripe), (235, 220, 190))
    return {"top": _finish(_paint(coat, blotches, (85, 55, 38)), mask)}


_DRAW = {"SynLynx": _draw_lynx, "SynSalamander": _draw_salamander, "SynTurtle": _draw_turtle,
         "SynLizard": _draw_lizard}


def _background(rng, size: int, spec: dict) -> Image.Image:
    """One camera-trap scene, RGB of side `size`. Its props make it recognisable at a glance."""
    lo, hi = (np.asarray(g, np.float32) * rng.uniform(0.75, 1.25, 3) for g in spec["ground"])
    n = 0.5 * _noise(rng, size, 4) + 0.3 * _noise(rng, size, 12) + 0.2 * _noise(rng, size, 40)
    scene = Image.fromarray(np.clip(lo + (hi - lo) * n[..., None], 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(scene)
    for _ in range(int(rng.integers(4, 9))):
        shade = tuple(int(x) for x in (lo if rng.random() < 0.5 else hi) * rng.uniform(0.5, 1.2))
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.04, 0.12) * size
        if spec["scenery"] == "trunks":  # leaning, widening towards the ground
            draw.polygon([(x - r, -1), (x + r, -1), (x + 2.3 * r, size), (x - 0.3 * r, size)], fill=shade)
        elif spec["scenery"] == "leaves":
            t = np.linspace(0, 2 * np.pi, 12, endpoint=False)  # a narrow ellipse at any angle
            leaf = (np.cos(t) + 0.4j * np.sin(t)) * r * np.exp(1j * rng.uniform(0, np.pi)) + complex(x, y)
            draw.polygon(list(zip(leaf.real, leaf.imag)), fill=shade)
        else:
            draw.ellipse([x - r, y - 0.7 * r, x + r, y + 0.7 * r], fill=shade)
    return scene


def _coeffs(dst: np.ndarray, src: np.ndarray) -> tuple:
    """PIL PERSPECTIVE coefficients mapping output points dst [4, 2] back to input points src [4, 2]."""
    a = [row for (x, y), (p, q) in zip(dst, src)
         for row in ((x, y, 1, 0, 0, 0, -p * x, -p * y), (0, 0, 0, x, y, 1, -q * x, -q * y))]
    return tuple(np.linalg.solve(np.array(a), src.reshape(-1)))


def _photograph(rng, look: Image.Image, view: tuple, trap: Image.Image, spec: dict, s: int) -> Image.Image:
    """One photo: the individual's render posed, placed on its trap's scene, then blurred, lit and noised."""
    ox, oy = rng.integers(0, trap.size[0] - s + 1, 2)  # a camera trap barely moves between shots
    scene = trap.crop((ox, oy, ox + s, oy + s))
    (turn, squash), scale = view, rng.uniform(0.72, 1.0)
    theta = np.deg2rad(turn + rng.uniform(-spec["spin"], spec["spin"]))
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) * scale
    corners = np.array([(0, 0), (s, 0), (s, s), (0, s)], float)
    shift = s / 2 + rng.uniform(-1, 1, 2) * (1.1 - scale) * s / 2
    dst = (corners - s / 2) * (squash, 1) @ rot.T + shift + rng.normal(0, 0.035 * s, (4, 2))
    animal = look.transform((s, s), Image.PERSPECTIVE, _coeffs(dst, corners), Image.BILINEAR).convert("RGBA")
    alpha = animal.getchannel("A")
    shadow = alpha.filter(ImageFilter.GaussianBlur(0.04 * s)).point(lambda a: 255 - 2 * a // 5)  # grounds the animal
    scene = ImageChops.multiply(scene, Image.merge("RGB", [shadow] * 3))
    scene.paste(animal, (0, 0), alpha)
    if rng.random() < 0.5:
        scene = scene.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.3) * s / 160))
    ramp = np.linspace(-1, 1, s, dtype=np.float32)
    phi = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0, 0.4) * (ramp[None, :] * np.cos(phi) + ramp[:, None] * np.sin(phi))  # from one side
    gain = light[..., None] * (rng.uniform(0.65, 1.25) * rng.uniform(0.94, 1.06, 3)).astype(np.float32)  # [s, s, 3]
    img = np.asarray(scene, np.float32)
    contrast = rng.uniform(0.75, 1.2)
    img = (img * contrast + img.mean() * (1 - contrast)) * gain
    if rng.random() < spec["night"]:
        img = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2)  # infrared night shot
    img += rng.uniform(1, 5) * 3.46 * (rng.random((s, s, 3), dtype=np.float32) - 0.5)  # uniform noise of sd 1..5
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
