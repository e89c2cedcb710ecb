"""The review site on disk: static HTML, a little vanilla JavaScript, thumbnails. It opens from file://, offline.

Layout of a site folder (every file through kit.io: atomic, under the user's umask)::

    index.html              the datasets, with their counts and how to submit the decisions
    page_<dataset>.html     one page per dataset (kit/review/static/page.html)
    data_<dataset>.js       its data: ``window.KIT_REVIEW_DATA = {...}`` (file:// pages cannot fetch JSON)
    review.js, review.css   the page's code and style (kit/review/static/)
    thumbs/<key>.jpg        thumbnails (kit/review/thumbs.py), named by the photo's cache key

``write_site`` takes the pages of kit/review/identification.py and clusters.py (photos as paths, matches as
fractions of each photo), makes the thumbnails, and writes the photos as ``[src, width, height]`` and the match
lines in thumbnail px (flat, whole px): what the page draws needs no image to load first.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from importlib import resources
from pathlib import Path

import numpy as np

from ..io import jsonable, safe_file_name, write_text
from .thumbs import make_thumbnails

STATIC = ("review.js", "review.css")  # copied into every site as they are
DATA_VERSION = 1  # the shape of window.KIT_REVIEW_DATA (review.js reads it)
DATA_PREFIX = "window.KIT_REVIEW_DATA = "  # a data file is this, the JSON, then ";" (kit/review/notebook.py reads it)


def static_text(name: str) -> str:
    """A file of kit/review/static/ (package data, also in the wheel)."""
    return resources.files("kit.review").joinpath("static", name).read_text(encoding="utf-8")


def safe_name(dataset: str) -> str:
    """A dataset name made safe for a file name (letters, digits, ``_.-``)."""
    return safe_file_name(dataset, "dataset")


def _scale_lines(cand: dict, qa: tuple, qb: tuple) -> None:
    """A candidate's match lines from fractions of each photo to whole px of the two thumbnails, flat:
    ``[xa0, ya0, xb0, yb0, xa1, ...]``, and their confidence in whole percent (a 2,000-query page stays a few MB)."""
    m = cand.get("matches")
    if m is None:
        return
    (_, wa, ha), (_, wb, hb) = qa, qb
    lines = np.rint(np.asarray(m["lines"], np.float64).reshape(-1, 4) * [wa, ha, wb, hb]).astype(int)
    cand["matches"] = {"n": int(m["n"]), "lines": lines.ravel().tolist(),
                       "conf": [int(round(100 * float(c))) for c in m["conf"]]}


def write_site(out: str | Path, pages: list[dict], *, competition: str, layout: str, thumb_size: int = 256,
               cache_dir: Path | None = None, answers: bool = False, header: dict | None = None) -> dict:
    """Write the site of ``pages`` (one per dataset) into ``out``; returns {"index", "pages", "thumbnails"}.

    ``competition``: its name (keys the browser's saved progress with ``layout`` and each dataset, so a rebuilt
    site keeps what was decided); ``answers``: the pages show a validation split's answers (their progress is kept
    apart from a submission's); ``header``: lines for the index page (data, local matching, ...).
    """
    out = Path(out)
    paths = [p for page in pages for p in page["photos"]]
    thumbs, stats = make_thumbnails(paths, out / "thumbs", thumb_size, cache_dir)
    site_key = f"kit-review|{'validate' if answers else 'submit'}|{layout}|{competition}|"
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    written = []
    for page in pages:
        photos = [(f"thumbs/{thumbs[p][0]}", thumbs[p][1], thumbs[p][2]) for p in page["photos"]]
        for q in page.get("queries", []):
            for cand in q["candidates"]:
                _scale_lines(cand, photos[q["photo"]], photos[cand["photo"]])
        name = safe_name(page["dataset"])
        data = {**page, "version": DATA_VERSION, "photos": [list(p) for p in photos], "layout": layout,
                "competition": competition, "site_key": site_key, "storage_key": site_key + str(page["dataset"]),
                "answers": answers, "created": created, "index": "index.html",
                "pages": [{"dataset": p["dataset"], "href": f"page_{safe_name(p['dataset'])}.html"} for p in pages]}
        text = json.dumps(jsonable(data), separators=(",", ":"), allow_nan=False)
        write_text(f"{DATA_PREFIX}{text};\n", out / f"data_{name}.js")
        title = f"{page['dataset']}: review ({'validation answers' if answers else page['task']})"
        write_text(static_text("page.html").replace("__TITLE__", html.escape(title))
                   .replace("__DATA__", f"data_{name}.js"), out / f"page_{name}.html")
        written.append(out / f"page_{name}.html")
    for f in STATIC:
        write_text(static_text(f), out / f)
    index = write_text(_index_html(pages, competition, layout, answers, created, header or {}), out / "index.html")
    return {"index": index, "pages": written, "thumbnails": stats}


def _index_html(pages: list[dict], competition: str, layout: str, answers: bool, created: str, header: dict) -> str:
    rows = []
    for p in pages:
        counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in p.get("counts", {}).items())
        href = f"page_{safe_name(p['dataset'])}.html"
        rows.append(f"<li><a href=\"{html.escape(href)}\">{html.escape(str(p['dataset']))}</a> "
                    f"<span class=\"muted\">{html.escape(counts)}</span></li>")
    lines = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in header.items())
    how = ("These pages show a validation split with its answers, for error analysis: its queries are database "
           "photos of the real competition, so its decisions are not for <code>kit submit</code>." if answers else
           "Decide with the keyboard (press <kbd>?</kbd> on a page), then <b>Export decisions.json</b> and run "
           "<code>kit submit DATA --decisions decisions.json</code> (or <code>make submit DATA=... "
           "DECISIONS=decisions.json</code>). Progress is kept in this browser.")
    return (static_text("index.html").replace("__TITLE__", html.escape(f"{competition}: review"))
            .replace("__HEADING__", html.escape(f"{competition} ({layout} layout)"))
            .replace("__PAGES__", "".join(rows)).replace("__HEADER__", lines)
            .replace("__HOW__", how).replace("__CREATED__", html.escape(created)))
