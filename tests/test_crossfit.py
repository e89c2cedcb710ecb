"""Cross-fitting (issue 18): what a pseudo-query is judged on never saw it, and its gallery is the real one's size."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kit.config import DEFAULTS
from kit.head import cross_fitted, photo_folds
from kit.pairmodel import fit_pair_model
from kit.pipeline.identification import dataset_candidates
from kit.pipeline.local import Plan

HEAD = {**DEFAULTS["head"], "enabled": True, "steps": 40, "dim": 16, "pca": 0, "lr": 1e-2, "folds": 3}


def _world(seed: int = 0, n_ids: int = 12, per: int = 4, d: int = 24):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, d))
    labels = np.repeat([f"id{i:02d}" for i in range(n_ids)], per).astype(object)
    x = centres[np.repeat(np.arange(n_ids), per)] + 0.8 * rng.normal(size=(len(labels), d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    frame = pd.DataFrame({"image_id": [f"img{i:03d}" for i in range(len(x))], "identity": labels,
                          "filepath": [f"/nowhere/{i}.jpg" for i in range(len(x))], "dataset": "Syn"})
    return frame, x


def _conf() -> dict:
    conf = {s: dict(v) for s, v in DEFAULTS.items()}
    conf["head"] = dict(HEAD)
    conf["cache"] = {**conf["cache"], "enabled": False}
    return conf


def test_photo_folds_leave_every_identity_in_every_training_set():
    frame, _ = _world()
    keys = frame["identity"].map(lambda s: f"k{s}").to_numpy()
    fold = photo_folds(frame["image_id"].to_numpy(), frame["identity"].to_numpy(), keys, 3, 0)
    for f in range(3):  # each identity (4 photos) keeps photos outside every fold
        assert frame.loc[fold != f, "identity"].nunique() == 12
    # dealt out within an identity: 4 photos over 3 folds touch every fold
    assert all(len(set(fold[frame["identity"] == i])) == 3 for i in frame["identity"].unique())


def test_cross_fitted_rows_never_come_from_a_head_that_saw_them():
    """Moving photo 0 changes only the heads trained on it: rows of its own photo fold (known role) and of its own
    identity fold (new role) come from heads that never saw it, so among the other photos they do not move; rows of
    the other folds do."""
    from kit.splits import name_folds

    frame, x = _world(1)
    labels, keys = frame["identity"].to_numpy(object), frame["identity"].to_numpy(object)
    ids = frame["image_id"].to_numpy()
    known, new, query = cross_fitted(x, labels, ids, keys, HEAD, x[:2], ids[:2])
    moved = x.copy()
    moved[0] = -moved[0]
    known2, new2, _ = cross_fitted(moved, labels, ids, keys, HEAD, x[:2], ids[:2])
    rest = np.arange(1, len(x))
    for sims, sims2, fold in ((known, known2, photo_folds(ids, labels, keys, 3, 0)),
                              (new, new2, name_folds(keys, 3, 0))):
        mine = np.flatnonzero(fold == fold[0])[1:]
        other = np.flatnonzero(fold != fold[0])
        assert np.allclose(sims[np.ix_(mine, rest)], sims2[np.ix_(mine, rest)])
        assert not np.allclose(sims[np.ix_(other, rest)], sims2[np.ix_(other, rest)])
    assert known.shape == new.shape == (48, 48) and query.shape == (2, 48)
    assert np.isneginf(np.diag(known)).all() and np.isfinite(query).all()


def test_a_pretend_new_identitys_own_photos_change_none_of_its_features():
    """Leakage (issue 18): photo 0's identity gets its other photos moved right next to photo 0. As a known
    pseudo-query, row 0 sees them (they take the first slots and push every other candidate down the ranks); as a
    new animal it must see nothing of them: same candidates, same cosines, ranks and head columns."""
    frame, x = _world(2)
    conf, plan = _conf(), Plan()
    same = np.flatnonzero(frame["identity"] == frame["identity"][0])[1:]
    moved = x.copy()
    moved[same] = x[0] + 0.01 * np.random.default_rng(0).normal(size=(len(same), x.shape[1]))
    moved /= np.linalg.norm(moved, axis=1, keepdims=True)
    q = frame.iloc[:0]
    a = dataset_candidates(frame, q, {"d": x}, {"d": x[:0]}, conf, plan)
    b = dataset_candidates(frame, q, {"d": moved}, {"d": moved[:0]}, conf, plan)
    assert "cos:head" in a["new"].cols and "rank:head" in a["new"].cols
    assert np.array_equal(a["new"].index[0], b["new"].index[0])
    assert not set(a["new"].index[0]) & set(same)
    for col in a["new"].cols:
        assert np.allclose(a["new"].cols[col][0], b["new"].cols[col][0], atol=1e-6), col
    # the same photos present (the known role) do change the row: the test could fail
    assert not np.array_equal(a["db"].index[0], b["db"].index[0])
    assert not np.allclose(a["db"].cols["cos:d"][0], b["db"].cols["cos:d"][0])


def test_predict_only_pairs_get_out_of_fold_values_but_never_train():
    """``fit_mask``: the pretend-new rows are predicted, never fitted on: whatever their columns say, the model and
    the other pairs' out-of-fold values stay the same."""
    rng = np.random.default_rng(3)
    n = 600
    same = rng.random(n) < 0.3
    cols = {"a": (same + rng.normal(0, 0.7, n)).astype(np.float32)}
    query = np.array([f"q{i // 6}" for i in range(n)])
    group = np.array([f"g{i // 30}" for i in range(n)])
    fit = ~(np.arange(n) >= 480)
    one = fit_pair_model(cols, ("a",), same & fit, query, group, "logistic", 4, select=False, fit_mask=fit)
    cols2 = {"a": np.where(fit, cols["a"], 50.0).astype(np.float32)}
    two = fit_pair_model(cols2, ("a",), same & fit, query, group, "logistic", 4, select=False, fit_mask=fit)
    assert np.allclose(one.oof[fit], two.oof[fit]) and not np.allclose(one.oof[~fit], two.oof[~fit])
    assert two.oof[~fit].min() > 0.9  # predicted (out of fold) all the same


def test_identity_strict_folds_fit_no_pair_whose_candidate_is_in_the_tested_fold():
    """A column that tells the truth only for pairs whose candidate identity is g0 is learnt, with query-only folds,
    from pairs of other query identities, and read on g0's fold; with the candidate's identity as well (``group_b``), g0's fold never learns from it."""
    rng = np.random.default_rng(4)
    n = 4000
    qg = rng.integers(0, 10, n)
    cg = rng.integers(0, 10, n)
    same = rng.random(n) < 0.5
    leak = np.where(cg == 0, same, rng.random(n) < 0.5).astype(np.float32)  # the truth only where g0 is the candidate
    cols = {"leak": leak, "is_g0": (cg == 0).astype(np.float32)}
    query = np.array([f"q{i}" for i in range(n)])
    g, gb = np.array([f"g{v}" for v in qg]), np.array([f"g{v}" for v in cg])
    loose = fit_pair_model(cols, ("leak", "is_g0"), same, query, g, "lightgbm", 5, select=False)
    strict = fit_pair_model(cols, ("leak", "is_g0"), same, query, g, "lightgbm", 5, select=False, group_b=gb)
    tested = (qg != 0) & (cg == 0)  # the reverse pairs of g0's own pairs
    from kit.splits import name_folds

    fold = name_folds(np.r_[g, gb], 5, 0)
    f0 = fold[len(g):][cg == 0][0]
    rows = tested & (fold[:len(g)] == f0)  # pairs in g0's fold with a g0 candidate
    acc = lambda p: float(((p[rows] > 0.5) == same[rows]).mean())  # noqa: E731
    assert rows.sum() > 20
    assert acc(loose.oof) > 0.95 and acc(strict.oof) < 0.75, (acc(loose.oof), acc(strict.oof))
