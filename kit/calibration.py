"""Score -> P(same individual) calibrators, fitted on labelled pairs; shared by re-ranking and clustering.

Two kinds, both scikit-learn estimators:

- ``"isotonic"``: a non-decreasing step function (pool-adjacent-violators), clipped to [0, 1] and to the fitted
  range. No shape assumed: it follows whatever a score's relation to identity is, as long as it is monotone.
- ``"logistic"``: a sigmoid of the standardised score. Smooth and strictly monotone, so it keeps the order of
  scores that isotonic steps would tie.
"""

from __future__ import annotations

import warnings

import numpy as np

from .errors import ConfigError

METHODS = ("isotonic", "logistic")


def fit_calibrator(scores: np.ndarray, same: np.ndarray, method: str = "isotonic"):
    """Fit P(same | score): ``scores: [P] float``, ``same: [P] bool``; NaN scores are left out.

    Returns the fitted estimator (apply it with ``apply_calibrator``, or its own ``predict`` for isotonic).
    Raises ValueError when the pairs hold only one kind (all same or all different).
    """
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scores = np.asarray(scores, np.float64).ravel()
    same = np.asarray(same, bool).ravel()
    ok = np.isfinite(scores)
    scores, same = scores[ok], same[ok]
    if same.all() or not same.any():
        raise ValueError("calibration needs both same-identity and different-identity pairs; got only one kind")
    if method == "isotonic":
        return IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(scores, same)
    if method == "logistic":
        model = make_pipeline(StandardScaler(), LogisticRegression()).fit(scores[:, None], same)
        if model[-1].coef_[0, 0] <= 0:
            warnings.warn("logistic calibration: a higher score means a LOWER chance of a match on these pairs; "
                          "this score carries no usable signal")
        return model
    raise ConfigError(f"calibration method {method!r}: choose one of {', '.join(METHODS)}")


def apply_calibrator(model, scores: np.ndarray) -> np.ndarray:
    """P(same) for ``scores`` of any shape: float32 of that shape (computed in float64); NaN stays NaN."""
    scores = np.asarray(scores, np.float64)
    flat = scores.ravel()
    out = np.full(flat.shape, np.nan, np.float64)
    ok = np.isfinite(flat)
    if ok.any():
        x = flat[ok]
        out[ok] = model.predict_proba(x[:, None])[:, 1] if hasattr(model, "predict_proba") else model.predict(x)
    return out.reshape(scores.shape).astype(np.float32)
