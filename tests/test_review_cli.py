"""`kit review`, `kit validate --review`, `kit submit --decisions` and `make submit DECISIONS=...` end to end on the
tiny synthetic competitions (real lite0 weights, RootSIFT on)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from kit.cache import file_hash
from kit.cli import main
from kit.io import read_csv_str
from kit.review import read_pages
from kit.schema import NEW_INDIVIDUAL

SETTINGS = ["embed.model=tf_efficientnet_lite0", "embed.image_size=64", "embed.num_workers=0",
            "rerank.max_keypoints=64", "rerank.resize=128"]
FAST = [a for s in SETTINGS for a in ("--set", s)]
ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_review_writes_a_page_per_dataset_with_drawn_matches(tiny_2025, tmp_path, capsys):
    out = tmp_path / "site"
    assert main(["review", str(tiny_2025), "--out", str(out), *FAST]) == 0
    said = capsys.readouterr().out
    assert f"wrote the review site {out / 'index.html'} (3 page(s)" in said and "--decisions" in said
    pages = {p["dataset"]: p for p in read_pages(out)}
    assert set(pages) == {"SynLynx", "SynSalamander", "SynTurtle"}
    for page in pages.values():
        qs = page["queries"]
        assert len(qs) == page["counts"]["queries"] > 0 and page["local"]["drawn"] == 3
        assert [q["uncertainty"] for q in qs] == sorted((q["uncertainty"] for q in qs), reverse=True)
        drawn = [c["matches"] for q in qs for c in q["candidates"][:3]]
        assert any(m["lines"] for m in drawn), "RootSIFT matched something"
        for q in qs:
            for c in q["candidates"][:3]:
                _, w, h = page["photos"][c["photo"]]
                _, wq, hq = page["photos"][q["photo"]]
                flat = c["matches"]["lines"]
                assert len(flat) == 4 * len(c["matches"]["conf"])
                for xa, ya, xb, yb in zip(flat[::4], flat[1::4], flat[2::4], flat[3::4]):
                    assert 0 <= xa <= wq and 0 <= ya <= hq and 0 <= xb <= w and 0 <= yb <= h
    assert (out / "page_SynLynx.html").is_file() and (out / "review.js").is_file()
    # a second site reuses every thumbnail from the cache
    capsys.readouterr()
    assert main(["review", str(tiny_2025), "--out", str(tmp_path / "again"), *FAST,
                 "--set", "rerank.enabled=false"]) == 0
    assert "thumbnails: 0 made" in capsys.readouterr().out
    off = read_pages(tmp_path / "again")[0]
    assert off["local"]["drawn"] == 0 and "rerank.enabled=false" in off["local"]["note"]


def test_validate_review_shows_the_answers_errors_first(tiny_2025, tmp_path):
    out = tmp_path / "val"
    assert main(["validate", str(tiny_2025), "--review", str(out), *FAST, "--set", "validate.n_unknown=4"]) == 0
    order = ("wrong_identity", "missed_new", "false_new", "correct")
    for page in read_pages(out):
        assert page["answers"] and page["has_truth"]
        ranks = [order.index(q["truth"]["status"]) for q in page["queries"]]
        assert ranks == sorted(ranks)
        assert sum(page["counts"][s] for s in order) == page["counts"]["queries"]
    assert "not for <code>kit submit</code>" in (out / "index.html").read_text()


def test_validate_review_of_a_2026_folder_shows_wrong_merges_first(tiny_2026, tmp_path):
    out = tmp_path / "val"
    assert main(["validate", str(tiny_2026), "--review", str(out), *FAST, "--set", "validate.n_unknown=4"]) == 0
    order = ("impure", "split", "correct")
    pages = read_pages(out)
    assert pages and all(p["task"] == "clustering" and p["answers"] for p in pages)
    for page in pages:
        ranks = [order.index(c["status"]) for c in page["clusters"]]
        assert ranks == sorted(ranks)
        assert all("truth" in m for c in page["clusters"] for m in c["members"])
        assert sum(len(c["members"]) for c in page["clusters"]) == page["counts"]["photos"]


def test_make_submit_applies_decisions_and_records_them_in_the_sidecar(tiny_2025, tmp_path):
    meta = read_csv_str(tiny_2025 / "metadata.csv")
    q = meta.loc[(meta["split"] == "query") & (meta["dataset"] == "SynTurtle"), "image_id"].tolist()
    ident = sorted(meta.loc[(meta["split"] == "database") & (meta["dataset"] == "SynTurtle"), "identity"])[0]
    decisions = tmp_path / "decisions.json"
    decisions.write_text(json.dumps({"decisions": [{"image_id": q[0], "identity": ident},
                                                   {"image_id": q[1], "identity": NEW_INDIVIDUAL}]}))
    subs = tmp_path / "subs"
    env = {**os.environ, "KIT_CACHE": str(tmp_path / "cache")}
    res = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "-o", ".venv/.installed", "submit",
                          f"DATA={tiny_2025}", f"SUBMISSIONS={subs}", f"DECISIONS={decisions}",
                          f"SET={' '.join(SETTINGS + ['validate.n_unknown=4'])}"],
                         capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "decisions applied: 2 identities" in res.stdout
    csv = next(subs.glob("*.csv"))
    sub = read_csv_str(csv).set_index("image_id")["identity"]
    assert sub[q[0]] == ident and sub[q[1]] == NEW_INDIVIDUAL
    side = json.loads(csv.with_suffix(".json").read_text())
    rec = side["decisions"]
    assert rec["files"] == [{"file": str(decisions.resolve()), "sha1": file_hash(decisions), "decisions": 2,
                             "links": 0}]
    assert rec["decisions"] == 2 and 0 <= rec["changed"] <= 2


def test_2026_submit_honours_the_links(tiny_2026, tmp_path, capsys):
    base = tmp_path / "base.csv"
    assert main(["submit", str(tiny_2026), "--out", str(base), *FAST]) == 0
    sub = read_csv_str(base)
    meta = read_csv_str(tiny_2026 / "metadata.csv").set_index("image_id")
    part = sub[meta.loc[sub["image_id"], "dataset"].to_numpy() == "SynLynx"]
    groups = part.groupby("cluster")["image_id"].apply(list)
    big = next(g for g in groups if len(g) >= 2)  # split this cluster
    a, b = next((g[0] for g in groups if g is not big), None), big[0]  # merge another cluster's photo into it
    assert a is not None
    links = [{"a": big[0], "b": big[1], "same": False}, {"a": a, "b": b, "same": True}]
    path = tmp_path / "decisions.json"
    path.write_text(json.dumps({"links": links}))
    out = tmp_path / "linked.csv"
    capsys.readouterr()
    assert main(["submit", str(tiny_2026), "--out", str(out), "--decisions", str(path), *FAST]) == 0
    assert "links applied: 1 must-links and 1 cannot-links" in capsys.readouterr().out
    got = read_csv_str(out).set_index("image_id")["cluster"]
    assert got[big[0]] != got[big[1]] and got[a] == got[b]
