"""Local matching as a run uses it: each pair matched once, a rerun from the cache, blank photos, the plan."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kit import rerank
from kit.config import load_config
from kit.pipeline import local


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    """Four photos: a card, the same card shifted, another card, and a blank grey photo (no keypoints)."""
    folder = tmp_path_factory.mktemp("cards")
    rng = np.random.default_rng(0)
    a = np.kron(rng.integers(0, 255, (24, 32, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    b = np.kron(rng.integers(0, 255, (24, 32, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    paths = []
    for name, img in (("a", a), ("a_shift", np.roll(a, (5, 9), (0, 1))), ("b", b),
                      ("blank", np.full_like(a, 128))):
        paths.append(str(folder / f"{name}.png"))
        Image.fromarray(img).save(paths[-1])
    return paths


def _sift():
    return rerank.make_scorer("sift", rerank.rerank_conf({"max_keypoints": 128, "resize": 256, "num_workers": 0}))


def test_each_pair_is_matched_once_and_a_rerun_reads_the_cache(cards, tmp_path):
    pairs = np.array([[i, j] for i in range(4) for j in range(4) if i != j])  # both directions of 6 pairs
    scorer = _sift()
    first = rerank.score_pairs(scorer, cards, cards, pairs, tmp_path)
    assert scorer.pairs_matched == 6  # each unordered pair once; the reverse direction came with it
    again = _sift()
    second = rerank.score_pairs(again, cards, cards, pairs, tmp_path)
    assert again.pairs_matched == 0  # all from the pair cache
    for c in first:
        np.testing.assert_array_equal(first[c], second[c])
    n = dict(zip(map(tuple, pairs.tolist()), first["n_matches"]))
    assert n[(0, 1)] >= 20 and n[(0, 1)] > 4 * max(n[(0, 2)], 1)  # the shifted copy matches, the other card not
    assert n[(0, 1)] == pytest.approx(n[(1, 0)], abs=3)  # the two directions read the ratio on either side


def test_without_a_disk_cache_the_memo_still_matches_each_pair_once(cards):
    scorer, memo = _sift(), {}
    pairs = np.array([[0, 1], [1, 0], [0, 2]])
    rerank.score_pairs(scorer, cards, cards, pairs, None, memo)
    rerank.score_pairs(scorer, cards, cards, pairs[::-1], None, memo)
    assert scorer.pairs_matched == 2


def test_a_photo_without_keypoints_scores_zero_not_a_crash(cards, tmp_path):
    out = rerank.score_pairs(_sift(), cards, cards, np.array([[3, 0], [0, 3], [3, 3]]), tmp_path)
    for c, v in out.items():
        if c == "mask":
            assert v.shape == (3, 16) and not v.any()  # 128 keypoints, none matched
        else:
            assert v.tolist() == [0.0, 0.0, 0.0], c


def _meta(n_db: int, n_q: int) -> pd.DataFrame:
    return pd.DataFrame({"split": ["database"] * n_db + ["query"] * n_q, "dataset": "D"}).assign(
        image_id=lambda d: [str(i) for i in range(len(d))])


def test_the_plan_shortens_the_shortlist_then_drops_the_slowest_matcher(monkeypatch, capsys):
    rates = {"sift": {"extract_s": 0.0, "pairs_per_s": 1000.0}, "aliked-n16": {"extract_s": 0.0, "pairs_per_s": 2.0}}

    class Fake:
        family, device_name = "sift", "cpu"

        def __init__(self, name, rc):
            self.name = name

    monkeypatch.setattr("kit.rerank.make_scorer", Fake)
    monkeypatch.setattr(local, "probe", lambda s, cache_dir: rates[s.name])
    meta = _meta(1000, 500)  # 500 candidates each: 500 x 500 + 0.6 x 1000 x 500 = 550k pairs
    conf = load_config(None, ["rerank.extractor=[aliked-n16, sift]", "rerank.budget_s=300"])
    plan = local.plan_matching(meta, conf)
    out = capsys.readouterr().out
    assert plan.names == ["sift"] and "dropping it" in out  # LightGlue on 2 pairs/s fits no shortlist
    assert plan.topk == 200 and plan.seconds <= 300  # 550k pairs is 9 min at 1000/s; 200 each is 220k, 3.7 min
    assert "local matching: sift on" in out and "shortlist 200" in out
    tight = local.plan_matching(meta, load_config(None, ["rerank.budget_s=1"]))
    assert tight.scorers == [] and "local matching OFF" in capsys.readouterr().out  # never off silently
    forced = local.plan_matching(meta, load_config(None, ["rerank.budget_s=1", "rerank.enabled=true"]))
    assert forced.names == ["sift"] and "over rerank.budget_s" in capsys.readouterr().out
    off = local.plan_matching(meta, load_config(None, ["rerank.enabled=false"]))
    assert off.scorers == [] and "off" in off.why
