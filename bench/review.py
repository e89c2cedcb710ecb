"""Benchmark of the review pages: how fast a large page shows its first queries in a real browser.

    .venv/bin/python bench/review.py [--queries 2000] [--runs 5] [--out bench/review.json]

Builds a synthetic 2025 page (kit.review.identification_page + write_site) of ``--queries`` queries against a
database of 500 photos of 100 identities, every query with 5 candidates and 60 drawn match lines on each of the
top 3 (the default page shape), synthetic 256 px photos as thumbnails. Then, in headless Chromium (Debian's
chromium + chromium-driver through Selenium: kit.review.browser), it opens the page from disk ``--runs`` times,
each in a fresh browser profile (nothing cached), and reads ``window.kitReview.firstPhotosMs``: the page's
``performance.now()`` (ms since navigation start) when every photo of the first 20 queries has loaded. It also
times jumping to the last query (every card rendered). Writes bench/review.json and prints the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kit.review import identification_page, write_site  # noqa: E402
from kit.review.browser import find_browser, headless_chrome  # noqa: E402
from kit.schema import NEW_INDIVIDUAL  # noqa: E402

RC = {"candidates": 5, "drawn": 3, "max_lines": 60, "thumb_size": 256, "neighbours": 3}


def synthetic_photos(folder: Path, n: int, seed: int) -> list[str]:
    """n photo-like JPEGs (blocky colour fields, 256 x 192 or 192 x 256)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        block = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        img = np.kron(block, np.ones((16, 16, 1), np.uint8))
        if i % 3 == 2:
            img = img.transpose(1, 0, 2)
        path = folder / f"{seed}_{i:05d}.jpg"
        Image.fromarray(img).save(path, quality=85)
        out.append(str(path))
    return out


def synthetic_page(folder: Path, n_queries: int, n_db: int = 500, n_ids: int = 100, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    db = pd.DataFrame({"image_id": [f"d{i}" for i in range(n_db)],
                       "identity": [f"id{i % n_ids:03d}" for i in range(n_db)],
                       "filepath": synthetic_photos(folder / "db", n_db, 1)})
    q = pd.DataFrame({"image_id": [f"q{i}" for i in range(n_queries)],
                      "filepath": synthetic_photos(folder / "q", n_queries, 2)})
    sims = rng.uniform(-1.9, -1.0, (n_queries, n_db)).astype(np.float32)
    listed = rng.random((n_queries, n_db)) < 0.05
    sims[listed] = rng.random(int(listed.sum()))
    identities = np.array(sorted(db["identity"].unique()), dtype=object)
    codes = pd.Index(identities).get_indexer(db["identity"])
    id_scores = np.full((n_queries, len(identities)), -np.inf, np.float32)
    for k in range(len(identities)):
        id_scores[:, k] = sims[:, codes == k].max(1)
    score = id_scores.max(1)
    decision = np.where(score >= 0.5, identities[id_scores.argmax(1)], NEW_INDIVIDUAL).astype(object)

    def matcher(pairs):
        return [{"n": 80, "lines": rng.random((60, 4)).astype(np.float32),
                 "conf": np.sort(rng.random(60)).astype(np.float32)[::-1]} for _ in pairs]

    return identification_page("Synthetic", q, db, {"sims": sims, "identities": identities, "id_scores": id_scores},
                               decision, score, 0.5, RC, matcher=matcher)


def measure(page_path: Path, runs: int) -> dict:
    first, jump = [], []
    for _ in range(runs):
        with headless_chrome() as chrome:
            chrome.get(page_path.as_uri())
            end = time.monotonic() + 60
            while time.monotonic() < end:
                ms = chrome.execute_script("return window.kitReview && window.kitReview.firstPhotosMs")
                if ms:
                    break
                time.sleep(0.02)
            broken = chrome.execute_script(
                "return Array.prototype.filter.call(document.querySelectorAll('#card-19 img, #card-0 img'),"
                " function (i) { return !(i.complete && i.naturalWidth > 0); }).length")
            assert ms and broken == 0, "the first 20 queries did not show their photos"
            first.append(float(ms))
            jump.append(float(chrome.execute_script(
                "var t = performance.now(); window.kitReview.go(window.KIT_REVIEW_DATA.queries.length - 1);"
                " return performance.now() - t;")))
    return {"first_20_photos_ms": {"runs": first, "median": statistics.median(first), "max": max(first)},
            "jump_to_last_query_ms": {"runs": jump, "median": statistics.median(jump)}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).with_name("review.json")))
    args = ap.parse_args(argv)
    browser, driver, why = find_browser()
    if why:
        print(f"cannot run: {why}")
        return 2
    with tempfile.TemporaryDirectory(prefix="kit-bench-review-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        page = synthetic_page(tmp / "photos", args.queries)
        built = time.perf_counter() - t
        t = time.perf_counter()
        write_site(tmp / "site", [page], competition="bench", layout="2025", thumb_size=256, cache_dir=tmp / "cache")
        written = time.perf_counter() - t
        data_bytes = (tmp / "site" / "data_Synthetic.js").stat().st_size
        result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
                  "browser": os.popen(f"{browser} --version 2>/dev/null").read().strip(),
                  "queries": args.queries, "database_photos": 500, "candidates": 5, "drawn": 3, "lines_per_pair": 60,
                  "data_js_bytes": data_bytes, "page_data_s": round(built, 2), "site_write_s": round(written, 2),
                  **measure(tmp / "site" / "page_Synthetic.html", args.runs)}
    f = result["first_20_photos_ms"]
    print(f"{args.queries} queries, data_Synthetic.js {data_bytes / 1e6:.1f} MB: first 20 queries with their photos "
          f"in {f['median']:.0f} ms (median of {args.runs} fresh browsers; max {f['max']:.0f} ms); jump to the "
          f"last query {result['jump_to_last_query_ms']['median']:.0f} ms")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
