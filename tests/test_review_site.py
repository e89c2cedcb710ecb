"""kit/review: page data from plain arrays (order, candidates, answers), the site on disk (thumbnails cached, match
lines in thumbnail px), drawn matches from RootSIFT, the notebook view. No pipeline runs here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kit.review import (clustering_page, identification_page, make_thumbnails, nearest_clusters, read_pages,
                        uncertain_html, write_site)
from kit.review.matches import pair_matches
from kit.review.site import STATIC, static_text
from kit.schema import NEW_INDIVIDUAL

RC = {"candidates": 3, "drawn": 2, "max_lines": 5, "thumb_size": 48, "neighbours": 2}


def photos(folder: Path, n: int, seed: int = 0) -> list[str]:
    """n random JPEGs, landscape and portrait in turn (120 x 80, 60 x 90)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        w, h = (120, 80) if i % 2 == 0 else (60, 90)
        path = folder / f"p{seed}_{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        out.append(str(path))
    return out


def toy_identification(tmp_path):
    """4 queries against 6 database photos of identities A, A, B, B, C, C; tau 0.5 on the top-1 score."""
    db_paths, q_paths = photos(tmp_path / "db", 6, 1), photos(tmp_path / "q", 4, 2)
    db = pd.DataFrame({"image_id": [f"d{i}" for i in range(6)], "identity": list("AABBCC"), "filepath": db_paths})
    q = pd.DataFrame({"image_id": [f"q{i}" for i in range(4)], "filepath": q_paths})
    sims = np.array([[0.30, 0.95, 0.10, 0.05, -1.2, -1.3],   # q0: clearly A (photo d1)
                     [0.52, 0.20, 0.10, 0.05, -1.2, -1.3],   # q1: A at 0.52, right at tau
                     [0.80, 0.10, 0.10, 0.79, -1.2, -1.3],   # q2: A 0.80 and B 0.79: the top two close
                     [0.02, 0.01, 0.03, 0.01, -1.1, -1.4]],  # q3: clearly new
                    np.float32)
    identities = np.array(["A", "B", "C"], dtype=object)
    id_scores = np.stack([sims[:, :2].max(1), sims[:, 2:4].max(1), sims[:, 4:].max(1)], 1)
    score = id_scores.max(1)
    decision = np.where(score >= 0.5, identities[id_scores.argmax(1)], NEW_INDIVIDUAL).astype(object)
    evidence = {"sims": sims, "identities": identities, "id_scores": id_scores}
    return q, db, evidence, decision, score


def fake_matcher(pairs):
    return [{"n": 9, "lines": np.array([[0.5, 0.5, 1.0, 1.0], [0.0, 0.25, 0.5, 0.0]], np.float32),
             "conf": np.array([0.9, 0.4], np.float32)} for _ in pairs]


def test_identification_page_puts_the_uncertain_first_with_each_identity_s_best_photo(tmp_path):
    q, db, ev, decision, score = toy_identification(tmp_path)
    calls = []
    page = identification_page("Toy", q, db, ev, decision, score, 0.5, RC,
                               matcher=lambda p: calls.append(p.copy()) or fake_matcher(p))
    order = [r["image_id"] for r in page["queries"]]
    assert set(order[:2]) == {"q1", "q2"} and set(order[2:]) == {"q0", "q3"}
    rows = {r["image_id"]: r for r in page["queries"]}
    assert "near tau" in rows["q1"]["reason"] and "top two" in rows["q2"]["reason"]
    c0 = rows["q0"]["candidates"]
    assert [c["identity"] for c in c0] == ["A", "B", "C"]
    assert c0[0]["image_id"] == "d1" and c0[0]["p"] == pytest.approx(0.95)  # A's best photo, not its first
    assert c0[2]["listed"] is False and c0[2]["cos"] == pytest.approx(0.8)  # -2 + cosine: not shortlisted
    assert "matches" in c0[0] and "matches" in c0[1] and "matches" not in c0[2]  # review.drawn = 2
    assert page["photos"][rows["q0"]["photo"]] == q["filepath"][0]
    assert page["photos"][c0[0]["photo"]] == db["filepath"][1]
    pairs = calls[0]
    assert pairs.shape == (8, 2) and [1, 0] in pairs.tolist() and [1, 3] not in pairs.tolist()  # q0 -> d1, d2
    assert page["counts"] == {"queries": 4, "new": 1}


def test_answers_put_wrong_identities_then_missed_new_individuals_first(tmp_path):
    q, db, ev, decision, score = toy_identification(tmp_path)
    truth = pd.DataFrame({"identity": ["A", "A", "B", "C"], "new_identity": [False, False, False, True]})
    truth.loc[0, ["identity", "new_identity"]] = ["X", True]  # q0 said A, but it is a new individual
    page = identification_page("Toy", q, db, ev, decision, score, 0.5, RC, truth=truth)
    got = [(r["image_id"], r["truth"]["status"]) for r in page["queries"]]
    assert got[0] == ("q2", "wrong_identity")  # said A, truth B
    assert got[1] == ("q0", "missed_new")
    assert {s for _, s in got[2:]} == {"correct"}
    q2 = page["queries"][0]
    assert q2["truth"]["rank"] == 2 and page["counts"]["wrong_identity"] == 1
    assert page["local"]["drawn"] == 0  # no matcher: nothing drawn


def test_site_scales_match_lines_to_thumbnails_and_reuses_cached_thumbnails(tmp_path):
    q, db, ev, decision, score = toy_identification(tmp_path)
    page = identification_page("Toy set", q, db, ev, decision, score, 0.5, RC, matcher=fake_matcher)
    cache = tmp_path / "cache"
    site = write_site(tmp_path / "site", [page], competition="toy", layout="2025", thumb_size=48, cache_dir=cache)
    n = len(page["photos"])
    assert n == 9  # 4 queries and the 5 database photos that are some candidate's best
    assert site["thumbnails"] == {"made": n, "cached": 0, "kept": 0}
    assert len(list((cache / "thumbs" / "48px-v1").glob("*.jpg"))) == n
    data = read_pages(tmp_path / "site")[0]
    assert data["storage_key"] == "kit-review|submit|2025|toy|Toy set" and data["dataset"] == "Toy set"
    for src, w, h in data["photos"]:
        with Image.open(tmp_path / "site" / src) as im:
            assert im.size == (w, h) and max(w, h) == 48
    row = data["queries"][0]
    (_, wq, hq), cand = data["photos"][row["photo"]], row["candidates"][0]
    _, wc, hc = data["photos"][cand["photo"]]
    lines = cand["matches"]["lines"]  # flat [xa, ya, xb, yb, ...] in whole thumbnail px
    assert lines == [round(0.5 * wq), round(0.5 * hq), wc, hc, 0, round(0.25 * hq), round(0.5 * wc), 0]
    assert cand["matches"]["n"] == 9 and cand["matches"]["conf"] == [90, 40]
    html = (tmp_path / "site" / "page_Toy_set.html").read_text()
    assert '<script src="data_Toy_set.js"></script>' in html and '<script src="review.js"></script>' in html
    for f in STATIC:
        assert (tmp_path / "site" / f).read_text() == static_text(f)
    assert "page_Toy_set.html" in (tmp_path / "site" / "index.html").read_text()
    again = write_site(tmp_path / "site2", [page], competition="toy", layout="2025", thumb_size=48, cache_dir=cache)
    assert again["thumbnails"] == {"made": 0, "cached": n, "kept": 0}
    same = write_site(tmp_path / "site2", [page], competition="toy", layout="2025", thumb_size=48, cache_dir=cache)
    assert same["thumbnails"] == {"made": 0, "cached": 0, "kept": n}
    answers = write_site(tmp_path / "val", [page], competition="toy", layout="2025", thumb_size=48, answers=True)
    assert read_pages(tmp_path / "val")[0]["site_key"].startswith("kit-review|validate|")  # kept apart
    assert answers["thumbnails"]["made"] == n  # no cache: written straight into the site


def test_thumbnails_are_upright_and_never_upscaled(tmp_path):
    small = tmp_path / "small.jpg"
    Image.new("RGB", (30, 20), "red").save(small)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": a phone's portrait shot stored sideways
    Image.new("RGB", (200, 100), "blue").save(rotated, exif=exif)
    out, _ = make_thumbnails([str(small), str(rotated)], tmp_path / "t", 64)
    assert out[str(small)][1:] == (30, 20)
    assert out[str(rotated)][1:] == (32, 64)  # upright: portrait


def test_thumbnails_go_straight_into_the_site_when_the_cache_cannot_be_written(tmp_path):
    """A cache folder that cannot be written (here a file where its folder should be; a full disk alike) warns once
    and the thumbnails are made into the site: the site is complete."""
    from kit.errors import KitWarning
    from kit.review.thumbs import VERSION

    photos = []
    for i in range(3):
        photos.append(str(tmp_path / f"p{i}.jpg"))
        Image.new("RGB", (100, 80), (40 * i, 0, 0)).save(photos[-1])
    cache = tmp_path / "cache"
    (cache / "thumbs").mkdir(parents=True)
    (cache / "thumbs" / f"64px-v{VERSION}").write_text("a file, not a folder\n")
    with pytest.warns(KitWarning, match=f"cannot write to the cache folder {cache}") as seen:
        out, stats = make_thumbnails(photos, tmp_path / "site", 64, cache, workers=1)
    assert len(seen) == 1 and stats == {"made": 3, "cached": 0, "kept": 0}
    assert all((tmp_path / "site" / out[p][0]).is_file() for p in photos)


def test_nearest_clusters_is_the_best_cosine_between_their_photos():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    codes = rng.integers(0, 9, 40)
    codes = np.unique(codes, return_inverse=True)[1].ravel()
    n = codes.max() + 1
    got = nearest_clusters(emb, codes, n)
    cos = emb @ emb.T
    for c in range(n):
        for d in range(n):
            want = -np.inf if c == d else cos[np.ix_(codes == c, codes == d)].max()
            assert got[c, d] == pytest.approx(want, abs=1e-5)


def test_clustering_page_puts_wrong_merges_first_and_offers_merges(tmp_path):
    paths = photos(tmp_path / "t", 7, 3)
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 16))
    truth = np.array(["x", "x", "x", "y", "y", "z", "z"], dtype=object)
    emb = centres[[0, 0, 0, 1, 1, 2, 2]] + rng.normal(0, 0.05, (7, 16))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    labels = np.array(["c0", "c0", "c1", "c1", "c1", "c2", "c2"], dtype=object)  # c1 mixes x and y; x is split
    frame = pd.DataFrame({"image_id": [f"i{k}" for k in range(7)], "filepath": paths})
    page = clustering_page("Toy", frame, labels, emb, RC, truth)
    got = [(c["cluster"], c["status"]) for c in page["clusters"]]
    assert got == [("c1", "impure"), ("c0", "split"), ("c2", "correct")]
    c1 = page["clusters"][0]
    assert [m["image_id"] for m in c1["members"]][-1] == "i2"  # the odd photo out comes last
    c0 = page["clusters"][1]
    nb = c0["neighbours"][0]
    assert nb["cluster"] == "c1" and page["clusters"][nb["index"]]["cluster"] == "c1" and nb["same_truth"]
    assert page["counts"]["impure"] == 1 and page["counts"]["clusters"] == 3
    plain = clustering_page("Toy", frame, labels, emb, RC)
    assert "status" not in plain["clusters"][0] and plain["clusters"][0]["cohesion"] is not None


def test_rootsift_matches_are_fractions_of_each_photo(tiny_2025):
    from kit.rerank import make_scorer, rerank_conf

    scorer = make_scorer("sift", rerank_conf({"max_keypoints": 64, "resize": 128, "num_workers": 0}))
    paths = sorted(str(p) for p in (tiny_2025 / "images").rglob("*.jpg"))[:3]
    out = pair_matches(scorer, paths, paths, np.array([[0, 0], [0, 1]]), None, max_lines=10)
    assert len(out) == 2
    self_match = out[0]
    assert self_match["n"] >= len(self_match["lines"]) > 0 and len(self_match["lines"]) <= 10
    assert np.allclose(self_match["lines"][:, :2], self_match["lines"][:, 2:], atol=1e-4)  # a photo onto itself
    assert (self_match["lines"] >= 0).all() and (self_match["lines"] <= 1).all()
    assert (np.diff(self_match["conf"]) <= 1e-6).all()  # most confident first


def test_the_notebook_view_embeds_the_most_uncertain(tmp_path):
    q, db, ev, decision, score = toy_identification(tmp_path)
    page = identification_page("Toy", q, db, ev, decision, score, 0.5, RC, matcher=fake_matcher)
    write_site(tmp_path / "site", [page], competition="toy", layout="2025", thumb_size=48)
    html = uncertain_html(tmp_path / "site", 2)
    assert html.count("<tr><td>Toy</td>") == 2 and "data:image/jpeg;base64," in html
    shown = {i for i in ("q0", "q1", "q2", "q3") if f"<b>{i}</b>" in html}
    assert shown == {"q1", "q2"}  # the two most uncertain
    assert "no review site" in uncertain_html(tmp_path / "nothing", 2)


def test_the_static_files_ship_in_the_wheel():
    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert '"kit.review" = ["static/*"]' in text
    for name in ("page.html", "index.html", *STATIC):
        assert static_text(name)
    js = static_text("review.js")
    for key in ('"decisions"', "localStorage", "decisions.json", "same: false", "same: true"):
        assert key.strip('"') in js
    json.dumps(RC)  # the review section is plain data
