"""The review in a notebook: the most uncertain queries (or clusters) of a review site, shown inline as images.

``show_uncertain(folder, n)`` reads a site that ``kit review`` / ``kit submit --review`` wrote (its data_*.js and
thumbnails) and displays one HTML table, the thumbnails embedded, so it shows in Jupyter and Kaggle alike and stays
in the saved notebook. ``uncertain_html`` gives the same HTML as text.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .site import DATA_PREFIX


def read_pages(folder: str | Path) -> list[dict]:
    """The page data of every dataset of a review site (``data_*.js``), by dataset name."""
    pages = []
    for path in sorted(Path(folder).glob("data_*.js")):
        text = path.read_text(encoding="utf-8").strip()
        if text.startswith(DATA_PREFIX):
            pages.append(json.loads(text[len(DATA_PREFIX):].rstrip(";")))
    return pages


def _img(folder: Path, photo: list, height: int) -> str:
    src, w, h = photo
    data = base64.b64encode((folder / src).read_bytes()).decode()
    return (f'<img src="data:image/jpeg;base64,{data}" height="{height}" width="{max(1, round(w * height / h))}" '
            'style="display:inline-block;margin:1px">')


def uncertain_html(folder: str | Path, n: int = 10) -> str:
    """HTML of the ``n`` most uncertain queries (2025) or clusters (2026) over all datasets of the site."""
    folder = Path(folder)
    pages = read_pages(folder)
    if not pages:
        return f"<p>{html.escape(str(folder))}: no review site here (run <code>kit review</code> first)</p>"
    items = [(item["uncertainty"], page, item) for page in pages
             for item in page.get("queries", page.get("clusters", []))]
    items.sort(key=lambda t: -t[0])
    rows = []
    for u, page, item in items[:n]:
        photos = page["photos"]
        if page["task"] == "identification":
            what = (f"<b>{html.escape(item['image_id'])}</b><br>kit: {html.escape(item['decision'])}<br>"
                    f"<small>{html.escape(item['reason'])}</small>")
            pics = _img(folder, photos[item["photo"]], 96) + " &rarr; " + " ".join(
                f'<span style="display:inline-block;text-align:center">{_img(folder, photos[c["photo"]], 96)}<br>'
                f"<small>{html.escape(c['identity'])} P {c['p']:.2f}</small></span>" for c in item["candidates"][:3])
        else:
            what = (f"<b>{html.escape(item['cluster'])}</b><br>{len(item['members'])} photos<br>"
                    f"<small>{html.escape(item['reason'])}</small>")
            pics = " ".join(_img(folder, photos[m["photo"]], 80) for m in item["members"][:8])
        rows.append(f"<tr><td>{html.escape(page['dataset'])}</td><td>{u:.3f}</td><td>{what}</td><td>{pics}</td></tr>")
    kind = "queries" if pages[0]["task"] == "identification" else "clusters"
    return (f"<h4>The {len(rows)} most uncertain {kind} (open {html.escape(str(folder / 'index.html'))} to review "
            "them all)</h4><table><tr><th>dataset</th><th>uncertainty</th><th></th><th>photos</th></tr>"
            + "".join(rows) + "</table>")


def show_uncertain(folder: str | Path, n: int = 10) -> None:
    """Display ``uncertain_html(folder, n)`` in a notebook."""
    from IPython.display import HTML, display

    display(HTML(uncertain_html(folder, n)))
