"""kit.pairmodel and the per-dataset fitting of kit/pipeline/pairs.py: oracles and small synthetic worlds."""

from __future__ import annotations

import numpy as np
import pytest

from kit.pairmodel import fit_pair_model, mrr, select_features
from kit.pipeline.pairs import Candidates, fit_models

PC = {"method": "logistic", "cv_folds": 4, "min_gain": 0.005, "min_identities": 8, "min_positive": 30,
      "max_pairs": 400_000, "seed": 0, "features": "all"}


def test_mrr_by_hand_and_ties_share_their_rank():
    p = np.array([0.9, 0.1, 0.5, 0.2, 0.8, 0.3])
    same = np.array([0, 1, 1, 1, 0, 0], bool)
    q = np.array([0, 0, 0, 1, 1, 1])
    assert mrr(p, same, q) == pytest.approx((1 / 2 + 1 / 3) / 2)  # best true candidates at ranks 2 and 3
    assert mrr(np.zeros(6), same, q) == pytest.approx(1 / 2)  # all tied: mean rank 1 (0-based) -> 1/2
    assert np.isnan(mrr(p, np.zeros(6, bool), q))


def _world(rng, n_ids: int, per: int, w: dict[str, float], noise=("noise",)):
    """Pseudo-query pairs whose true log-odds is sum(w[c] * col): {col: [P]}, same [P], query [P], group [P]."""
    rows, cols = [], {c: [] for c in (*w, *noise)}
    same = []
    for i in range(n_ids * per):
        ident = i // per
        for j in range(n_ids * per):
            if i == j:
                continue
            s = j // per == ident
            same.append(s)
            rows.append((i, ident))
            for c, wc in w.items():  # a true pair is shifted by 1.5 x its weight (negative: lower for the same one)
                cols[c].append(rng.normal(1.5 * wc if s else 0.0, 1.0))
            for c in noise:
                cols[c].append(rng.normal())
    q, g = zip(*rows)
    return {c: np.array(v, np.float32) for c, v in cols.items()}, np.array(same), np.array(q), np.array(g)


def test_logistic_probability_matches_the_generating_model():
    """Oracle: pairs drawn from a known logistic model; the fitted P(same) recovers it."""
    rng = np.random.default_rng(0)
    n = 20000
    x = rng.normal(size=(n, 2))
    true_p = 1 / (1 + np.exp(-(-2.0 + 1.5 * x[:, 0] - 0.8 * x[:, 1])))
    same = rng.random(n) < true_p
    cols = {"a": x[:, 0], "b": x[:, 1]}
    q = np.arange(n) // 10
    fit = fit_pair_model(cols, ("a", "b"), same, q, q, "logistic", 4, select=False)
    p = fit.model.predict(cols)
    assert np.abs(p - true_p).mean() < 0.02 and fit.oof.shape == (n,)
    assert fit.model.describe()["weights"]["a"] > 0 > fit.model.describe()["weights"]["b"]


def test_forward_selection_keeps_the_informative_columns():
    rng = np.random.default_rng(1)
    cols, same, q, g = _world(rng, 12, 3, {"signal": 1.0, "weak": 0.5}, noise=("noise", "noise2"))
    fit = fit_pair_model(cols, ("noise", "signal", "weak", "noise2"), same, q, g, "logistic", 4)
    assert fit.model.names[0] == "signal" and "noise" not in fit.model.names and "noise2" not in fit.model.names
    seen = []  # each column adds 1 to every query's score, with a little spread: both are kept
    assert select_features(("x", "y"), lambda use: seen.append(use) or len(use) + np.arange(5) / 100, 0.5) == \
        ("x", "y")
    assert seen[:2] == [("x",), ("y",)]
    assert select_features(("x", "y"), lambda use: np.full(5, 1.0), 0.0) == ("x",)  # no gain: one column


def test_per_dataset_models_beat_a_pooled_one_when_species_disagree():
    """Dataset A's identity raises column u and lowers v, dataset B's the other way round: one model per dataset ranks
    both well; a model pooled over both cannot. A tiny dataset C falls back to the pooled model, and says so."""
    rng = np.random.default_rng(2)

    def dataset(w, n_ids=12, per=3):
        cols, same, q, g = _world(rng, n_ids, per, w, noise=())
        m = n_ids * per
        labels = np.repeat(np.arange(n_ids), per).astype(object)
        index = np.stack([np.r_[np.arange(i), np.arange(i + 1, m)] for i in range(m)])  # every other photo
        cand = Candidates(index, {c: v.reshape(m, m - 1) for c, v in cols.items()})
        cand.cols.update(flank_same=np.zeros((m, m - 1), np.float32))
        assert (labels[np.repeat(np.arange(m), m - 1)] == labels[index.ravel()]).tolist() == same.tolist()
        return cand, labels

    a = dataset({"cos:u": 1.0, "cos:v": -1.0})
    b = dataset({"cos:u": -1.0, "cos:v": 1.0})
    tiny = dataset({"cos:u": 1.0, "cos:v": -1.0}, n_ids=3, per=2)
    own = fit_models({"A": a, "B": b, "C": tiny}, "global", PC)
    pooled = fit_models({"A": a, "B": b, "C": tiny}, "global", {**PC, "min_positive": 10 ** 9})
    for ds, cand in (("A", a), ("B", b)):
        ok = cand[0].valid
        rows = np.broadcast_to(np.arange(len(ok))[:, None], ok.shape)[ok]
        same = cand[1][rows] == cand[1][cand[0].index[ok]]
        assert mrr(own[ds].oof, same, rows) > mrr(pooled[ds].oof, same, rows) + 0.1, ds
        assert own[ds].note == "" and "pooled" in pooled[ds].note
    assert "pooled over A, B, C" in own["C"].note
