"""kit.calibration: isotonic against pool-adjacent-violators by hand; monotone; both kinds of pair needed."""

from __future__ import annotations

import numpy as np
import pytest

from kit.calibration import apply_calibrator, fit_calibrator


def test_isotonic_calibration_matches_pool_adjacent_violators_by_hand():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    same = np.array([0, 1, 0, 0, 1, 1], bool)
    # PAV by hand: 0 | 1 0 0 violate, pooled to 1/3 each | 1 1
    cal = fit_calibrator(scores, same, "isotonic")
    np.testing.assert_allclose(apply_calibrator(cal, scores), [0, 1 / 3, 1 / 3, 1 / 3, 1, 1], atol=1e-6)
    # between fitted points it interpolates linearly; outside it clips
    np.testing.assert_allclose(apply_calibrator(cal, [0.15, 0.45, -5.0, 9.0]), [1 / 6, 2 / 3, 0, 1], atol=1e-6)
    assert np.isnan(apply_calibrator(cal, [np.nan])[0])


@pytest.mark.parametrize("method", ["isotonic", "logistic"])
def test_calibration_is_monotone(method):
    rng = np.random.default_rng(0)
    same = rng.random(400) < 0.3
    scores = rng.normal(0, 1, 400) + 1.5 * same
    p = apply_calibrator(fit_calibrator(scores, same, method), np.linspace(-4, 6, 201))
    assert p.dtype == np.float32 and (p >= 0).all() and (p <= 1).all()
    assert (np.diff(p) >= 0).all()
    assert p[-1] > 0.9 and p[0] < 0.1


def test_calibration_needs_both_kinds_of_pair():
    with pytest.raises(ValueError, match="both"):
        fit_calibrator(np.array([0.1, 0.2]), np.array([True, True]))
