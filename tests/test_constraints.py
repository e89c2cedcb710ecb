"""kit/cluster/constraints.py: human must-/cannot-links honoured by the 2026 clustering, whatever the method."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kit import cluster
from kit.cluster.constraints import constrain, forbidden_merges
from kit.config import load_config

METHODS = ("average", "complete", "single", "components")


def noisy_blocks(sizes, seed=0, noise=0.08):
    """[M, M] symmetric P(same): 0.85 inside the blocks, 0.15 across, plus noise; and the block labels."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(len(sizes)), sizes)
    prob = np.where(truth[:, None] == truth[None, :], 0.85, 0.15) + rng.normal(0, noise, (len(truth),) * 2)
    prob = np.clip((prob + prob.T) / 2, 0, 1).astype(np.float32)
    np.fill_diagonal(prob, 1.0)
    return prob, truth


def test_link_groups_close_must_links_transitively():
    groups = cluster.link_groups(6, [[0, 2], [2, 4], [5, 1]])
    assert groups[0] == groups[2] == groups[4]
    assert groups[1] == groups[5] != groups[0]
    assert len(set(groups)) == 3  # {0, 2, 4}, {1, 5}, {3}
    assert cluster.link_groups(3, np.zeros((0, 2))).tolist() == [0, 1, 2]


def test_a_cannot_link_inside_a_must_link_group_is_a_contradiction():
    with pytest.raises(cluster.LinkError, match="rows 0 and 4 are cannot-linked, but must-links join them"):
        cluster.check_links(5, [[0, 2], [2, 4]], [[0, 4]])
    with pytest.raises(cluster.LinkError, match="apart from itself"):
        cluster.check_links(3, [], [[1, 1]])
    with pytest.raises(cluster.LinkError, match="row 7"):
        cluster.check_links(3, [[0, 7]], [])


@pytest.mark.parametrize("method", METHODS)
def test_without_links_the_labels_are_cluster_matrix_s(method):
    prob, _ = noisy_blocks([4, 3, 5, 2], seed=1)
    want = cluster.cluster_matrix(prob, method, 0.5, 0.5)
    assert cluster.cluster_with_links(prob, method, 0.5, 0.5).tolist() == want.tolist()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linked_photos_end_up_together_and_apart(method, seed):
    prob, truth = noisy_blocks([5, 4, 6, 3, 4], seed=seed)
    rng = np.random.default_rng(seed)
    m = len(truth)
    # must-links across blocks (a human merging what the model kept apart), cannot-links inside blocks (a split)
    pick = {b: int(rng.choice(np.flatnonzero(truth == b))) for b in (0, 1, 3)}
    must = [[pick[0], pick[1]], [pick[1], pick[3]]]
    inside = np.flatnonzero(truth == 2)
    cannot = [[int(inside[0]), int(inside[1])], [int(inside[0]), int(inside[2])]]
    labels = cluster.cluster_with_links(prob, method, 0.5, 0.5, must, cannot)
    assert len(labels) == m
    for a, b in must:
        assert labels[a] == labels[b]
    for a, b in cannot:
        assert labels[a] != labels[b]
    assert labels[pick[0]] == labels[pick[3]]  # closed transitively


def test_a_cannot_link_splits_only_its_own_cluster():
    prob, truth = noisy_blocks([4, 4, 4], seed=3, noise=0.02)
    base = cluster.cluster_matrix(prob, "average", 0.5)
    assert len(set(base)) == 3
    labels = cluster.cluster_with_links(prob, "average", 0.5, cannot=[[4, 7]])
    assert labels[4] != labels[7]
    for block in (0, 2):  # the other clusters are untouched
        rows = np.flatnonzero(truth == block)
        assert len(set(labels[rows])) == 1 and not set(labels[rows]) & set(labels[truth != block])


def test_constrain_writes_the_links_into_the_matrix():
    prob, _ = noisy_blocks([3, 3], seed=4)
    out = constrain(prob, must=[[0, 3], [3, 4]], cannot=[[1, 5]])
    assert out[0, 4] == 1.0 and out[4, 0] == 1.0  # closed transitively
    assert out[1, 5] == 0.0 and out[5, 1] == 0.0
    unlinked = np.ones_like(out, bool)
    unlinked[np.ix_([0, 3, 4], [0, 3, 4])] = False
    assert (out[unlinked] < 1.0).all()  # nothing else ties with a must-link
    assert prob[1, 5] > 0  # the input is left alone


def test_forbidden_merges_are_the_common_ancestor_and_above():
    prob, _ = noisy_blocks([2, 2], seed=5, noise=0.0)
    tree = cluster.linkage_tree(prob, "average")
    forbid = forbidden_merges(tree, [[0, 1]])
    # merges: {0,1} first (or {2,3}), then the root; {0,1}'s merge and the root are forbidden, {2,3}'s is not
    joins = [set(tree[r, :2].astype(int)) for r in range(len(tree))]
    assert forbid[joins.index({0, 1})] and forbid[-1] and not forbid[joins.index({2, 3})]


def synthetic_test_set(n_ids=8, per_id=4, d=16, noise=0.35, seed=0):
    rng = np.random.default_rng(seed)
    rows, embs = [], []
    for i in range(n_ids):
        centre = rng.normal(size=d)
        for j in range(per_id):
            rows.append({"image_id": f"p{i}_{j}", "identity": f"A{i}", "dataset": "A", "orientation": "",
                         "split": "train" if j >= 2 and i % 2 else "test"})
            embs.append(centre / np.linalg.norm(centre) + rng.normal(0, noise / np.sqrt(d), d))
    df = pd.DataFrame(rows)
    emb = np.asarray(embs, np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    tr = (df["split"] == "train").to_numpy()
    return df[tr].reset_index(drop=True), emb[tr], df[~tr].reset_index(drop=True), emb[~tr]


def test_cluster_competition_honours_links_between_test_photos():
    train, emb_tr, test, emb_te = synthetic_test_set()
    cc = load_config()["cluster"]
    plain, _ = cluster.cluster_competition(train, emb_tr, test, emb_te, cc, verbose=False)
    by_id = dict(zip(test["image_id"], plain))
    assert by_id["p0_0"] == by_id["p0_1"] and by_id["p0_0"] != by_id["p1_0"]  # clean data: identities apart
    links = pd.DataFrame({"a": ["p0_0", "p2_0"], "b": ["p1_0", "p2_1"], "same": [True, False]})
    labels, details = cluster.cluster_competition(train, emb_tr, test, emb_te, cc, verbose=False, links=links)
    got = dict(zip(test["image_id"], labels))
    assert got["p0_0"] == got["p1_0"] == got["p0_1"]  # merged, and the must-link drew p0_1 along
    assert got["p2_0"] != got["p2_1"]  # split
    assert details["A"]["links"] == {"must": 1, "cannot": 1}
    untouched = [i for i in test["image_id"] if i[:2] not in ("p0", "p1", "p2")]
    assert [got[i] == got[j] for i in untouched for j in untouched] == \
        [by_id[i] == by_id[j] for i in untouched for j in untouched]
