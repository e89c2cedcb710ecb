"""Threshold search: oracle cases by hand and recovery of a known optimum."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kit.openset import choose_threshold, decide, score_curve
from kit.schema import NEW_INDIVIDUAL as NEW


def test_score_curve_oracle():
    # queries: two known of identity A (scores .9 correct, .4 correct), one known of B (.7 wrong top-1),
    # unknown identities U (scores .3, .8) and V (.5)
    score = np.array([0.9, 0.4, 0.7, 0.3, 0.8, 0.5])
    correct = np.array([True, True, False, False, False, False])
    unknown = np.array([False, False, False, True, True, True])
    identity = np.array(["A", "A", "B", "U", "U", "V"])
    taus, baks, baus = score_curve(score, correct, unknown, identity)
    at = dict(zip(taus, zip(baks, baus)))
    # tau = 0.5: known A -> .9 kept (right), .4 new (wrong) => A = 1/2; B = 0 => BAKS = 1/4
    #            U: .3 new, .8 kept => 1/2; V: .5 kept (not < .5) => 0 => BAUS = 1/4
    assert np.allclose(at[0.5], (0.25, 0.25))
    # tau = 0.8: A 1/2, B 0 => .25 ; U: .3 new, .8 kept => 1/2 ; V new => 1 => BAUS .75
    assert np.allclose(at[0.8], (0.25, 0.75))
    assert np.allclose(at[-np.inf], (0.5, 0.0))  # nothing new: BAKS = (1 + 0)/2
    assert np.allclose(at[np.inf], (0.0, 1.0))


def test_choose_threshold_picks_the_plateau_centre():
    score = np.array([0.9, 0.4, 0.7, 0.3, 0.8, 0.5])
    correct = np.array([True, True, False, False, False, False])
    unknown = np.array([False, False, False, True, True, True])
    identity = np.array(["A", "A", "B", "U", "U", "V"])
    tau, best = choose_threshold(score, correct, unknown, identity)
    # by hand: tau in (.8, .9] calls .4 .7 .3 .8 .5 new: BAKS = (1/2 + 0)/2 = .25, BAUS = (1 + 1)/2 = 1
    # -> sqrt(.25) = .5, better than tau in (.5, .8] (.433) or (.3, .4] (.354); centre of (.8, .9] is .85
    assert np.isclose(best, 0.5)
    assert np.isclose(tau, 0.85)


def test_recovers_known_optimum_on_synthetic_distributions():
    rng = np.random.default_rng(0)
    n = 4000
    known = rng.normal(0.8, 0.05, n)  # all correct at top-1
    unknown = rng.normal(0.6, 0.05, n)
    score = np.r_[known, unknown]
    is_unknown = np.r_[np.zeros(n, bool), np.ones(n, bool)]
    ident = np.r_[np.arange(n) % 100, 1000 + np.arange(n) % 100].astype(str)
    tau, best = choose_threshold(score, ~is_unknown, is_unknown, ident)
    # equal-variance Gaussians, equal weight: sqrt(Phi((.8-t)/s) * Phi((t-.6)/s)) peaks at the midpoint .7
    assert abs(tau - 0.7) < 0.01
    assert best > 0.97


def test_decide():
    out = decide(np.array(["a", "b"], dtype=object), np.array([0.2, 0.9]), 0.5)
    assert list(out) == [NEW, "b"]


# ---------------------------------------------------------------------------------------------------------
# evaluation, resampling, smoothed threshold

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kit import openset  # noqa: E402

HAND = dict(score=np.array([0.9, 0.4, 0.7, 0.3, 0.8, 0.5]),
            correct=np.array([True, True, False, False, False, False]),
            unknown=np.array([False, False, False, True, True, True]),
            identity=np.array(["A", "A", "B", "U", "U", "V"]))


def test_evaluate_matches_the_hand_computed_curve():
    # same case as test_score_curve_oracle: tau = 0.8 gives BAKS .25, BAUS .75
    baks, baus, score = openset.score_at(**HAND, tau=0.8)
    assert np.allclose([baks, baus, score], [0.25, 0.75, np.sqrt(0.25 * 0.75)])
    baks, baus, score = openset.score_at(**HAND, tau=-np.inf)
    assert np.allclose([baks, baus, score], [0.5, 0.0, 0.0])


def test_resample_weights_equal_duplicated_rows():
    """One resample's weights give the same curve as physically duplicating the drawn identities."""
    wk, wu = openset.resample_weights(HAND["unknown"], HAND["identity"], n=5, seed=3)
    assert np.allclose(wk.sum(1), 1) and np.allclose(wu.sum(1), 1)
    taus = openset.candidate_taus(HAND["score"])
    baks, baus = openset.curves_at(HAND["score"], HAND["correct"], HAND["unknown"], wk, wu, taus)
    for b in range(5):
        rows, groups = [], []
        for mask, w in ((~HAND["unknown"], wk[b]), (HAND["unknown"], wu[b])):
            idents = np.unique(HAND["identity"][mask])
            # draws per identity, recovered from the weights: w = m / (G * n_rows)
            for ident in idents:
                sel = np.flatnonzero(mask & (HAND["identity"] == ident))
                m = int(round(w[sel[0]] * len(idents) * len(sel)))
                for copy in range(m):
                    rows += list(sel)
                    groups += [f"{ident}#{copy}"] * len(sel)
        rows = np.array(rows)
        for t, (bk, bu) in enumerate(zip(baks[b], baus[b])):
            ek, eu, _ = openset.score_at(HAND["score"][rows], HAND["correct"][rows], HAND["unknown"][rows],
                                         np.array(groups), taus[t])
            assert np.isclose(bk, ek) and np.isclose(bu, eu)


def test_uniform_weights_reproduce_score_curve():
    wk = openset.balanced_weights(HAND["identity"][~HAND["unknown"]])
    full_k = np.zeros(6)
    full_k[~HAND["unknown"]] = wk
    full_u = np.zeros(6)
    full_u[HAND["unknown"]] = openset.balanced_weights(HAND["identity"][HAND["unknown"]])
    taus, baks, baus = openset.score_curve(**HAND)
    bk, bu = openset.curves_at(HAND["score"], HAND["correct"], HAND["unknown"], full_k[None], full_u[None], taus)
    assert np.allclose(bk[0], baks) and np.allclose(bu[0], baus)


def _gaussians(seed=0, n=2000):
    rng = np.random.default_rng(seed)
    score = np.r_[rng.normal(0.8, 0.05, n), rng.normal(0.6, 0.05, n)]
    unknown = np.r_[np.zeros(n, bool), np.ones(n, bool)]
    ident = np.r_[np.arange(n) % 100, 1000 + np.arange(n) % 100].astype(str)
    return score, ~unknown, unknown, ident


def test_fit_threshold_recovers_known_optimum_and_is_deterministic():
    score, correct, unknown, ident = _gaussians()
    fit = openset.fit_threshold(score, correct, unknown, ident, n_boot=100, seed=7)
    assert abs(fit["tau"] - 0.7) < 0.01  # the midpoint of equal-variance Gaussians, as in the plain search
    b = fit["boot"]
    assert b["tau_lo"] <= fit["tau"] <= b["tau_hi"] and b["tau_hi"] - b["tau_lo"] < 0.05
    again = openset.fit_threshold(score, correct, unknown, ident, n_boot=100, seed=7)
    assert again["tau"] == fit["tau"] and again["boot"] == b  # deterministic by seed
    other = openset.fit_threshold(score, correct, unknown, ident, n_boot=100, seed=8)
    assert other["boot"] != b  # and the seed matters


def test_fit_threshold_leaves_an_isolated_unknown_above_tau():
    """One unknown photo sitting among the knowns (0.89) is not worth calling every known below it new: both the
    plain search and the resampled one put tau on the broad plateau between the unknown crowd and the knowns."""
    known = np.linspace(0.5, 1.0, 40)  # each its own identity, all top-1 right
    unknown_s = np.r_[np.linspace(0.3, 0.4, 30), [0.89]]
    score = np.r_[known, unknown_s]
    unknown = np.r_[np.zeros(40, bool), np.ones(31, bool)]
    ident = np.r_[[f"k{i}" for i in range(40)], [f"u{i % 10}" for i in range(30)], ["lone"]]
    plain_tau, plain_score = openset.choose_threshold(score, ~unknown, unknown, ident)
    fit = openset.fit_threshold(score, ~unknown, unknown, ident, n_boot=200, seed=0)
    assert 0.4 < plain_tau < 0.5 and np.isclose(plain_score, np.sqrt(10 / 11))  # calling "lone" new: 0.43 at best
    assert 0.4 < fit["tau"] < 0.5  # below every known, above the crowd of unknowns
    assert openset.score_at(score, ~unknown, unknown, ident, fit["tau"])[2] > 0.9


def test_fit_threshold_without_resamples_is_the_plain_search():
    fit = openset.fit_threshold(**HAND, n_boot=0)
    assert np.isclose(fit["tau"], 0.85) and np.isclose(fit["insample"], 0.5) and fit["boot"] == {}


# ---------------------------------------------------------------------------------------------------------
# features and scorers


def test_query_features_by_hand():
    ids = np.array([[0.9, 0.5, 0.8], [0.3, 0.2, 0.1]], np.float32)
    f = openset.query_features(ids, db_best=np.array([0.95, 0.3]), query_best=np.array([0.5, 0.6]))
    assert np.allclose(f["top1"], [0.9, 0.3]) and np.allclose(f["margin"], [0.1, 0.1])
    assert np.allclose(f["qq_contrast"], [0.45, -0.3])
    one = openset.query_features(np.array([[0.4], [0.7]]))
    assert np.allclose(one["top1"], [0.4, 0.7]) and np.allclose(one["margin"], 0) and "qq_contrast" not in one


def test_best_other_ignores_the_diagonal():
    sims = np.array([[1.0, 0.2, 0.7], [0.2, 1.0, 0.1], [0.7, 0.1, 1.0]])
    assert np.allclose(openset.best_other(sims), [0.7, 0.2, 0.7])
    assert np.allclose(openset.best_other(np.ones((1, 1))), [-1.0])


def test_margin_candidate_scores_the_margin():
    feats = {"top1": np.array([0.9, 0.3]), "margin": np.array([0.1, 0.2])}
    s = openset.make_scorer("margin").fit(feats, np.array([True, False]), np.array([False, True]), np.array(["a", "b"]))
    assert np.allclose(s(feats), [0.1, 0.2])


def test_logistic_learns_the_informative_feature_and_ignores_wrong_knowns():
    # correct knowns have margin >= .3, unknowns <= .1; top1 is the same for both
    feats = {"top1": np.array([0.8, 0.8, 0.8, 0.8, 0.8, 0.8]), "margin": np.array([0.3, 0.4, 0.5, 0.0, 0.1, 0.05])}
    correct = np.array([True, True, True, False, False, False])
    unknown = np.array([False, False, False, True, True, True])
    ident = np.array(["a", "b", "c", "u", "v", "w"])
    sc = openset.make_scorer("logistic").fit(feats, correct, unknown, ident)
    s = sc(feats)
    assert s[:3].min() > s[3:].max()  # every correct known above every unknown
    assert sc.coef[1] > 0 and abs(sc.coef[0]) < 1e-3  # weight on margin; the constant top1 gets none
    # a known query with a wrong top-1 does not change the fit, whatever its features
    more = {k: np.r_[v, [0.99]] for k, v in feats.items()}
    sc2 = openset.make_scorer("logistic").fit(more, np.r_[correct, False], np.r_[unknown, False], np.append(ident, "x"))
    assert np.allclose(sc2.coef, sc.coef) and np.isclose(sc2.intercept, sc.intercept)


def test_logistic_before_fit_is_an_error():
    import pytest

    with pytest.raises(RuntimeError, match="before fit"):
        openset.make_scorer("logistic")({"top1": np.zeros(2), "margin": np.zeros(2)})


def _margin_world(seed=0, n_id=40, per=5):
    """top1 is pure noise; margin separates correct knowns from unknowns."""
    rng = np.random.default_rng(seed)
    unknown = np.repeat(np.arange(n_id) % 2 == 1, per)
    ident = np.repeat([f"i{i}" for i in range(n_id)], per)
    correct = ~unknown
    feats = {"top1": rng.normal(0.7, 0.05, len(ident)),
             "margin": np.where(unknown, rng.normal(0.02, 0.02, len(ident)), rng.normal(0.1, 0.02, len(ident)))}
    return feats, correct, unknown, ident


def test_cross_validate_prefers_the_informative_score():
    feats, correct, unknown, ident = _margin_world()
    cv_top1 = openset.cross_validate("top1", feats, correct, unknown, ident, ident, folds=4, repeats=2)
    cv_margin = openset.cross_validate("margin", feats, correct, unknown, ident, ident, folds=4, repeats=2)
    assert cv_margin > 0.9 and cv_top1 < 0.75


def test_calibrate_reports_the_winner_and_its_uncertainty():
    from kit.config import DEFAULTS

    oc = {**DEFAULTS["openset"], "bootstrap": 50, "cv_bootstrap": 10, "cv_repeats": 1}
    feats, correct, unknown, ident = _margin_world(1)
    cal = openset.fit_decision(feats, correct, unknown, ident, ident, oc)  # no qq_contrast: logistic_qq skipped
    assert "logistic_qq" not in cal["candidates"] and set(cal["candidates"]) == {"margin", "top1", "logistic"}
    # margin (the incumbent) separates the classes; top1 does not; logistic is no better by min_gain
    assert cal["candidate"] == "margin" and cal["candidates"]["top1"]["cv"] < 0.75
    assert cal["heldout_score"] > 0.9 and 0.02 < cal["tau"] < 0.1
    assert set(cal["bootstrap"]) >= {"tau_lo", "tau_hi", "score_lo", "score_hi"}
    with pytest.raises(ValueError, match="include 'top1'"):
        openset.fit_decision(feats, correct, unknown, ident, ident, {**oc, "candidates": ["logistic_qq"]})


def test_estimate_unknown_share_recovers_a_mixture():
    rng = np.random.default_rng(0)
    known, unknown = rng.normal(0.8, 0.05, 3000), rng.normal(0.6, 0.05, 3000)
    real = np.r_[rng.normal(0.8, 0.05, 700), rng.normal(0.6, 0.05, 300)]
    assert abs(openset.estimate_unknown_share(real, known, unknown) - 0.3) < 0.05
    assert np.isnan(openset.estimate_unknown_share(real, [], unknown))


def test_matched_query_fraction():
    # 100 unknown images, half the queries should be unknown -> 100 known queries out of 400 known images
    assert np.isclose(openset.matched_query_fraction(0.5, 100, 400, 0.3), 0.25)
    assert openset.matched_query_fraction(float("nan"), 100, 400, 0.3) == 0.3
    assert openset.matched_query_fraction(0.01, 100, 400, 0.3) == 0.5  # clipped


# ---------------------------------------------------------------------------------------------------------
# held-out calibration splits


@st.composite
def _labelled(draw):
    sizes = draw(st.lists(st.integers(1, 6), min_size=2, max_size=15))
    rows = [{"image_id": f"{i}-{j}", "identity": f"id{i}", "dataset": "D"} for i, n in enumerate(sizes)
            for j in range(n)]
    return pd.DataFrame(rows)


@settings(max_examples=25, deadline=None)
@given(_labelled(), st.integers(1, 60), st.sampled_from([1, 3, "auto"]), st.integers(0, 1000))
def test_calibration_splits_hold_out_no_database_identity(db, n_unknown, repeats, seed):
    splits = openset.calibration_splits(db, n_unknown, 0.3, repeats, 4, seed)
    assert len(splits) <= (4 if repeats == "auto" else repeats)
    for s in splits:
        assert len(s) == len(db) and set(s["image_id"]) == set(db["image_id"])
        in_db = set(s.loc[s["split"] == "database", "identity"])
        unknown = set(s.loc[s["new_identity"], "identity"])
        assert unknown and not unknown & in_db  # no held-out unknown is in that split's database
        q = s[s["split"] == "query"]
        assert (~q["new_identity"]).any() and set(q.loc[~q["new_identity"], "identity"]) <= in_db
    again = openset.calibration_splits(db, n_unknown, 0.3, repeats, 4, seed)
    assert len(again) == len(splits) and all(a.equals(b) for a, b in zip(again, splits))


def test_auto_repeats_reach_the_target():
    assert openset.n_repeats(100, 500, "auto", 8) == 5
    assert openset.n_repeats(10, 500, "auto", 8) == 8
    assert openset.n_repeats(600, 500, "auto", 8) == 1
    assert openset.n_repeats(10, 500, 2, 8) == 2
