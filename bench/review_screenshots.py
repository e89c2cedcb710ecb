"""Screenshots of a review site's pages in headless Chromium, to look at what a person sees.

    kit review /tmp/nyala25 --out /tmp/review-nyala25      # any site: kit review, submit --review, validate --review
    python bench/review_screenshots.py /tmp/review-nyala25 --out /tmp/shots

Writes one PNG per page (``<page>.png``: the first, most uncertain query or the first cluster, as the page opens)
and ``<page>-next.png`` after one ``j`` (the next one). The PNGs show real photos: keep them out of the repository.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kit.review.browser import headless_chrome  # noqa: E402


def wait_ready(chrome, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if chrome.execute_script("return document.documentElement.getAttribute('data-ready')"):
            return
        time.sleep(0.05)
    raise SystemExit("the page never said data-ready: open it in a browser and look at its console")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("site", help="a folder written by kit review (holds index.html and page_*.html)")
    ap.add_argument("--out", required=True, help="folder for the PNGs (outside the repository: real photos)")
    ap.add_argument("--size", default="1400x1100", help="window WIDTHxHEIGHT in pixels")
    args = ap.parse_args()
    site, out = Path(args.site).resolve(), Path(args.out)
    pages = sorted(site.glob("page_*.html"))
    if not pages:
        raise SystemExit(f"{site}: no page_*.html: write a site first with kit review DATA --out {site}")
    out.mkdir(parents=True, exist_ok=True)
    w, h = (int(v) for v in args.size.split("x"))
    with headless_chrome(size=(w, h)) as chrome:
        for page in pages:
            chrome.get(page.as_uri())
            wait_ready(chrome)
            time.sleep(0.5)  # the drawn lines go in after the photos load
            chrome.save_screenshot(str(out / f"{page.stem}.png"))
            chrome.find_element("tag name", "body").send_keys("j")
            time.sleep(0.8)
            chrome.save_screenshot(str(out / f"{page.stem}-next.png"))
            print(f"{page.name}: {out / page.stem}.png, {page.stem}-next.png")


if __name__ == "__main__":
    main()
