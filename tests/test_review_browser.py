"""The review pages in a real headless browser: Debian's chromium + chromium-driver, driven by Selenium (never a
browser download). Without them these tests skip and say why; under CI=true (.ci/run) they fail instead.

The 2025 test is the issue's acceptance: open the page from disk, press keys on three queries, export
decisions.json with the page's button, run `kit submit --decisions` with it, and find the CSV changed there only.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from kit.cli import main
from kit.data import read_competition
from kit.io import read_csv_str
from kit.review import clustering_page, load_decisions, read_pages, write_site
from kit.review.browser import find_browser, headless_chrome
from kit.schema import NEW_INDIVIDUAL

FAST = ["--set", "embed.model=tf_efficientnet_lite0", "--set", "embed.image_size=64", "--set", "embed.num_workers=0",
        "--set", "rerank.max_keypoints=64", "--set", "rerank.resize=128"]

pytestmark = pytest.mark.slow


@pytest.fixture
def browser_ok():
    _, _, why = find_browser()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true runs the browser tests, but {why}")
        pytest.skip(why)


def wait(condition, timeout=20.0, what="the page"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def open_page(chrome, path):
    chrome.get(path.as_uri())
    wait(lambda: chrome.execute_script("return document.documentElement.getAttribute('data-ready')"),
         what="the first photos")
    return chrome.find_element("tag name", "body")


def press(chrome, body, keys):
    for k in keys:
        body.send_keys(k)
    return chrome.execute_script("return window.kitReview.current()")


def export(chrome, downloads):
    chrome.find_element("id", "export").click()
    path = downloads / "decisions.json"
    wait(lambda: path.is_file() and path.stat().st_size > 0 and path.read_text().rstrip().endswith("}"),
         what="decisions.json to download")
    return path


def test_keys_on_three_queries_then_submit_changes_the_csv_there_only(browser_ok, tiny_2025, tmp_path):
    site, base = tmp_path / "site", tmp_path / "base.csv"
    assert main(["submit", str(tiny_2025), "--out", str(base), "--review", str(site), *FAST]) == 0
    page = next(p for p in read_pages(site) if p["dataset"] == "SynLynx")
    qs = page["queries"]
    assert all(q["candidates"] for q in qs[:4])

    def changing(q):  # a key whose decision differs from the kit's, and that decision
        return ("n", NEW_INDIVIDUAL) if q["decision"] != NEW_INDIVIDUAL else ("1", q["candidates"][0]["identity"])

    want = {}
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with headless_chrome(downloads) as chrome:
        body = open_page(chrome, site / "page_SynLynx.html")
        assert chrome.execute_script("return window.kitReview.current()") == 0
        # first query: accept, undo (back on it, nothing decided), then the changing key
        assert press(chrome, body, "a") == 1
        assert press(chrome, body, "u") == 0
        assert chrome.execute_script("return Object.keys(window.kitReview.state.decisions).length") == 0
        key, want[qs[0]["image_id"]] = changing(qs[0])
        assert press(chrome, body, key) == 1
        assert press(chrome, body, "s") == 2  # skip the second query
        for i in (2, 3):
            key, want[qs[i]["image_id"]] = changing(qs[i])
            assert press(chrome, body, key) == i + 1
        assert chrome.execute_script("return window.kitReview.state.decisions") == want
        badge = chrome.find_element("css selector", "#card-0 .badge.you").text
        assert badge == f"you: {want[qs[0]['image_id']]} (changed)"
        # progress survives a reload (localStorage), cursor included
        chrome.refresh()
        body = open_page(chrome, site / "page_SynLynx.html")
        assert chrome.find_element("id", "progress").text.startswith("3 / ")
        assert chrome.execute_script("return window.kitReview.current()") == 4
        exported = export(chrome, downloads)
    data = json.loads(exported.read_text())
    assert {d["image_id"]: d["identity"] for d in data["decisions"]} == want
    assert data["kit"]["layout"] == "2025" and data["kit"]["datasets"] == ["SynLynx"]

    new = tmp_path / "new.csv"
    assert main(["submit", str(tiny_2025), "--out", str(new), "--decisions", str(exported), *FAST]) == 0
    a, b = read_csv_str(base), read_csv_str(new)
    assert list(a["image_id"]) == list(b["image_id"])
    diff = a["identity"] != b["identity"]
    assert dict(zip(b.loc[diff, "image_id"], b.loc[diff, "identity"])) == want


def test_cluster_page_split_merge_confirm_export_links(browser_ok, tiny_2026, tmp_path):
    meta = read_competition(tiny_2026)
    test = meta[(meta["split"] == "test") & (meta["dataset"] == "SynLizard")].reset_index(drop=True)
    truth = read_csv_str(tiny_2026 / "solution.csv").set_index("image_id").loc[test["image_id"], "identity"].to_numpy()
    rng = np.random.default_rng(0)
    centres = {t: rng.normal(size=16) for t in set(truth)}
    emb = np.stack([centres[t] + rng.normal(0, 0.3, 16) for t in truth]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = truth.copy()
    labels[truth == truth[0]] = "merged"
    labels[truth == truth[-1]] = "merged"  # a wrong merge of two individuals
    rc = {"candidates": 5, "drawn": 3, "max_lines": 60, "thumb_size": 64, "neighbours": 3}
    page = clustering_page("SynLizard", test, labels, emb, rc)
    write_site(tmp_path / "site", [page], competition="c2026", layout="2026", thumb_size=64)
    clusters = page["clusters"]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with headless_chrome(downloads) as chrome:
        body = open_page(chrome, tmp_path / "site" / "page_SynLizard.html")
        assert len(chrome.find_elements("css selector", "#card-0 .ph img")) == len(clusters[0]["members"])
        # card 0: select its first photo and split it off (cannot-links to each other photo)
        press(chrome, body, "1")
        assert chrome.find_elements("css selector", "#card-0 .ph.sel")
        press(chrome, body, "x")
        n0 = len(clusters[0]["members"]) - 1
        # card 1: merge with its nearest cluster; card 2: confirm
        assert press(chrome, body, "j") == 1
        assert press(chrome, body, "m") == 2
        assert press(chrome, body, "a") == 3
        links = chrome.execute_script("return window.kitReview.state.links")
        n2 = len(clusters[2]["members"]) - 1
        assert len(links) == n0 + 1 + n2
        # a split of the confirmed cluster would contradict it: refused, nothing added
        press(chrome, body, "k")
        press(chrome, body, "1x")
        if n2 >= 1:
            assert len(chrome.execute_script("return window.kitReview.state.links")) == len(links)
            assert "contradicts" in chrome.find_element("id", "toast").text
        press(chrome, body, "u")  # undo the confirm
        assert len(chrome.execute_script("return window.kitReview.state.links")) == n0 + 1
        exported = export(chrome, downloads)
    data = json.loads(exported.read_text())
    first = clusters[0]["members"][0]["image_id"]
    others = {m["image_id"] for m in clusters[0]["members"][1:]}
    cannot = [(d["a"], d["b"]) for d in data["links"] if not d["same"]]
    assert {a for a, _ in cannot} == {first} and {b for _, b in cannot} == others
    nb = clusters[clusters[1]["neighbours"][0]["index"]]
    assert [d for d in data["links"] if d["same"]] == [
        {"a": clusters[1]["members"][0]["image_id"], "b": nb["members"][0]["image_id"], "same": True}]
    assert "decisions" not in data and data["kit"]["layout"] == "2026"
    dec = load_decisions(exported, meta)  # the export is a valid decisions file for this competition
    assert dec.summary()["links"] == {"must": 1, "cannot": n0}
