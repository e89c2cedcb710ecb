"""Threshold search: oracle cases by hand and recovery of a known optimum."""

from __future__ import annotations

import numpy as np

from kit.openset import NEW, choose_threshold, decide, score_curve


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
