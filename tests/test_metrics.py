"""Tests for kit.metrics: hand-computed oracles, every format error, CSV round trips, retrieval metrics.

Oracle values are worked out by hand in the comments next to them, never recomputed with kit code.
"""

import math
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score, average_precision_score

from kit.errors import DataError, SubmissionError
from kit.metrics import (
    baks,
    baus,
    detect_task,
    format_table,
    mean_average_precision,
    rank_k,
    score_2025,
    score_2026,
    score_files,
)

NEW = "new_individual"


def frames_2025(rows, dataset="D"):
    """rows: (true identity, new_identity, prediction) -> (solution, submission) for one dataset."""
    solution = pd.DataFrame(
        {
            "image_id": [f"{dataset}_q{i}" for i in range(len(rows))],
            "identity": [r[0] for r in rows],
            "dataset": dataset,
            "new_identity": [r[1] for r in rows],
        }
    )
    submission = pd.DataFrame({"image_id": solution["image_id"], "identity": [r[2] for r in rows]})
    return solution, submission


# ----------------------------------------------------------------------------------------------------------
# 2025 oracle: (name, rows, BAKS, BAUS, score), one dataset each

ORACLE_2025 = [
    # known a (2 queries), b (1); unknown u (2); all right -> 1, 1, sqrt(1*1) = 1
    ("perfect", [("a", False, "a"), ("a", False, "a"), ("b", False, "b"), ("u", True, NEW), ("u", True, NEW)],
     1.0, 1.0, 1.0),
    # everything "new_individual": known never right -> BAKS 0; unknown always right -> BAUS 1; sqrt(0) = 0
    ("all new_individual", [("a", False, NEW), ("a", False, NEW), ("b", False, NEW), ("u", True, NEW)],
     0.0, 1.0, 0.0),
    # known predicted as the other identity, unknown predicted as a known one -> 0, 0, 0
    ("all wrong", [("a", False, "b"), ("b", False, "a"), ("u", True, "a"), ("v", True, "b")],
     0.0, 0.0, 0.0),
    # no unknown query: BAKS = (1 + 0) / 2 = 0.5, BAUS undefined (NaN) -> counted as 0 -> score 0
    ("no unknown queries", [("a", False, "a"), ("b", False, "a")],
     0.5, math.nan, 0.0),
    # no known query: BAKS undefined -> 0; BAUS = (1 + 1) / 2 = 1 -> score 0
    ("no known queries", [("u", True, NEW), ("v", True, NEW)],
     math.nan, 1.0, 0.0),
    # one image per identity: BAKS = (1 + 0 + 1) / 3 = 2/3; BAUS = (1 + 0) / 2 = 1/2; sqrt(1/3) = 0.57735...
    ("one image per identity",
     [("k1", False, "k1"), ("k2", False, "k1"), ("k3", False, "k3"), ("u1", True, NEW), ("u2", True, "k1")],
     2 / 3, 0.5, 0.5773502691896258),
    # unbalanced: a has 4 queries all right, b has 1 wrong: plain accuracy 4/5 = 0.8 but BAKS = (1 + 0) / 2 = 0.5;
    # u1 has 3 queries all new, u2 has 1 predicted "a": plain 3/4 but BAUS = (1 + 0) / 2 = 0.5; sqrt(0.25) = 0.5
    ("unbalanced identities",
     [("a", False, "a")] * 4 + [("b", False, "a")] + [("u1", True, NEW)] * 3 + [("u2", True, "a")],
     0.5, 0.5, 0.5),
    # partial: a 2 of 3 right (2/3), b 1 of 1 -> BAKS 5/6; u 1 of 4 new -> BAUS 1/4; sqrt(5/24) = 0.456435...
    ("partial shares",
     [("a", False, "a"), ("a", False, "a"), ("a", False, NEW), ("b", False, "b"),
      ("u", True, NEW), ("u", True, "a"), ("u", True, "b"), ("u", True, "a")],
     5 / 6, 0.25, 0.45643546458763845),
]


@pytest.mark.parametrize("name,rows,want_baks,want_baus,want_score", ORACLE_2025, ids=[c[0] for c in ORACLE_2025])
def test_score_2025_oracle(name, rows, want_baks, want_baus, want_score):
    solution, submission = frames_2025(rows)
    score, table = score_2025(solution, submission)
    assert list(table.columns) == ["BAKS", "BAUS", "score"]
    assert list(table.index) == ["D"]
    got = table.loc["D"]
    for column, want in (("BAKS", want_baks), ("BAUS", want_baus)):
        if math.isnan(want):
            assert math.isnan(got[column]), column
        else:
            assert got[column] == pytest.approx(want, abs=1e-12), column
    assert got["score"] == pytest.approx(want_score, abs=1e-12)
    assert score == pytest.approx(want_score, abs=1e-12)


def test_score_2025_is_mean_over_datasets():
    # D1 perfect -> 1; D2 no unknown -> 0; D3 BAKS (1 + 0) / 2 = 0.5, BAUS (1 + 0) / 2 = 0.5 -> 0.5.
    # Mean (1 + 0 + 0.5) / 3 = 0.5. A pooled (not per-dataset) score would differ.
    s1, p1 = frames_2025([("a", False, "a"), ("u", True, NEW)], "D1")
    s2, p2 = frames_2025([("b", False, "b")], "D2")
    s3, p3 = frames_2025([("c", False, "c"), ("d", False, NEW), ("v", True, NEW), ("w", True, "c")], "D3")
    # rows interleaved: the scorer must follow the rows' dataset column, not blocks
    solution = pd.concat([s3, s1, s2]).iloc[[0, 4, 6, 1, 5, 2, 3]]
    submission = pd.concat([p3, p1, p2]).iloc[[0, 4, 6, 1, 5, 2, 3]]
    score, table = score_2025(solution, submission)
    assert list(table.index) == ["D1", "D2", "D3"]
    assert table["score"].tolist() == pytest.approx([1.0, 0.0, 0.5])
    assert score == pytest.approx(0.5)


def test_unknown_set_is_per_dataset():
    # "x" is known in D1 but new in D2. Per dataset: D1 BAKS 1 (x right), BAUS 1 -> 1; D2 BAKS 1, BAUS 1 -> 1.
    s1, p1 = frames_2025([("x", False, "x"), ("u", True, NEW)], "D1")
    s2, p2 = frames_2025([("y", False, "y"), ("x", True, NEW)], "D2")
    score, _ = score_2025(pd.concat([s1, s2]), pd.concat([p1, p2]))
    assert score == pytest.approx(1.0)


def test_baks_baus_functions():
    y_true = ["a", "a", "a", "b", "u", "u", "v"]
    y_pred = ["a", "a", "b", "b", NEW, "a", NEW]
    # known a: 2/3, b: 1 -> 5/6; unknown u: 1/2, v: 1 -> 3/4
    assert baks(y_true, y_pred, {"u", "v"}) == pytest.approx(5 / 6)
    assert baus(y_true, y_pred, ["u", "v"]) == pytest.approx(3 / 4)
    # custom new_class: u 2/2 -> 1, v predicted "a" -> 0 -> 1/2
    assert baus(y_true, ["unknown"] * 6 + ["a"], {"u", "v"}, new_class="unknown") == pytest.approx(0.5)
    assert math.isnan(baks(["u"], [NEW], {"u"}))
    assert math.isnan(baus(["a"], ["a"], {"u"}))
    # "123" and 123 are different labels: no coercion
    assert baks(["123"], [123], set()) == 0.0
    with pytest.raises(ValueError, match="equal length"):
        baks(["a", "b"], ["a"], set())


@settings(max_examples=40, deadline=None)
@given(
    hits=st.lists(st.tuples(st.booleans(), st.integers(1, 4)), min_size=1, max_size=6),
    repeat=st.integers(2, 5),
)
def test_baks_ignores_how_many_images_an_identity_has(hits, repeat):
    # identity i has n_i queries, all right or all wrong; BAKS is then the share of right identities, so
    # repeating the first identity's queries `repeat` times must not change it
    y_true, y_pred = [], []
    for i, (right, n) in enumerate(hits):
        count = n * repeat if i == 0 else n
        y_true += [f"id{i}"] * count
        y_pred += [f"id{i}" if right else NEW] * count
    assert baks(y_true, y_pred, set()) == pytest.approx(sum(r for r, _ in hits) / len(hits))


# ----------------------------------------------------------------------------------------------------------
# 2025 format errors


def good_2025():
    return frames_2025([("a", False, "a"), ("b", False, "b"), ("u", True, NEW)])


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda s: s.drop(columns="image_id"),
         r"The submission must have column image_id\. Found columns: \['identity'\]\. "
         r"Fix: the header line must be image_id,identity\."),
        (lambda s: s.drop(columns="identity"),
         r"The submission must have column identity\. .*Fix: the header line must be image_id,identity\."),
        (lambda s: s.iloc[:2],
         r"The submission length must be 3\. Found 2 rows; missing image_id 'D_q2'\. "
         r"Fix: write exactly one row per test image"),
        (lambda s: s.iloc[[0, 2, 1]],
         r"Submission column image_id is wrong\. Verify that it is in the same order as in sample_submission\.csv\. "
         r"First mismatch at row 1 \(line 3 of the CSV\): expected 'D_q1', found 'D_q2'\."),
        (lambda s: s.assign(identity=[None, None, None]),
         r"Submission column identity must be a string; every value is empty\."),
        (lambda s: s.assign(identity=pd.Series(["a", 7, NEW], dtype=object)),
         r"Submission column identity must be a string; row 1 \(line 3 of the CSV\) holds 7\. "
         r"Fix: write identity values as text"),
        (lambda s: s.assign(identity=[1, 2, 3]),
         r"Submission column identity must be a string; row 0 \(line 2 of the CSV\) holds 1"),
    ],
    ids=["no image_id", "no identity", "length", "order", "all empty", "mixed types", "int column"],
)
def test_score_2025_format_errors(mutate, message):
    solution, submission = good_2025()
    with pytest.raises(SubmissionError, match=message):
        score_2025(solution, mutate(submission))


@pytest.mark.parametrize("blank", ["", None, float("nan")], ids=["empty string", "None", "NaN"])
def test_score_2025_scores_an_empty_identity_as_wrong(blank):
    # as Kaggle: known a right, known b blank (wrong) -> BAKS 1/2; unknown u right -> BAUS 1; sqrt(1/2)
    solution, submission = good_2025()
    submission["identity"] = pd.Series(["a", blank, NEW], dtype=object)
    score, table = score_2025(solution, submission)
    assert table.loc["D", "BAKS"] == pytest.approx(0.5) and table.loc["D", "BAUS"] == 1.0
    assert score == pytest.approx(0.5 ** 0.5)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda s: s.drop(columns="new_identity"),
         r"The solution must have column new_identity\. .*Fix: a 2025 solution\.csv has the header "
         r"image_id,identity,dataset,new_identity\."),
        (lambda s: s.assign(new_identity=["False", "False", "True"]),
         r"The solution column new_identity must be boolean; row 0 \(line 2 of the CSV\) holds 'False'"),
        (lambda s: s.assign(dataset=["D", "", "D"]),
         r"The solution column dataset is empty at row 1 \(line 3 of the CSV\)"),
        (lambda s: s.iloc[:0], r"The solution has no rows"),
    ],
    ids=["no new_identity", "new_identity text", "empty dataset", "no rows"],
)
def test_score_2025_solution_errors(mutate, message):
    solution, submission = good_2025()
    with pytest.raises(DataError, match=message):
        score_2025(mutate(solution), submission)


def test_detect_task():
    assert detect_task(["image_id", "identity"]) == "identification"
    assert detect_task(["image_id", "cluster"]) == "clustering"
    with pytest.raises(SubmissionError, match=re.escape(
        "Cannot tell the task from the submission's columns ['image_id', 'label']. Fix: the header line must be "
        "image_id,identity (2025 identification) or image_id,cluster (2026 clustering).")):
        detect_task(["image_id", "label"])
    with pytest.raises(SubmissionError, match="both identity and cluster columns"):
        detect_task(["image_id", "identity", "cluster"])


# ----------------------------------------------------------------------------------------------------------
# 2026: ARI


def frames_2026(true, pred, dataset="D"):
    solution = pd.DataFrame(
        {"image_id": [f"{dataset}_{i}" for i in range(len(true))], "identity": true, "dataset": dataset}
    )
    submission = pd.DataFrame({"image_id": solution["image_id"], "cluster": [f"cluster_{dataset}_{c}" for c in pred]})
    return solution, submission


ORACLE_2026 = [
    # same partition under other names -> 1
    ("relabelled perfect", ["a", "a", "b", "c", "c"], [7, 7, 3, 1, 1], 1.0),
    # everything in one cluster while the truth has several groups -> ARI 0
    ("one cluster", ["a", "a", "b", "b", "c"], [0, 0, 0, 0, 0], 0.0),
    # every image its own cluster while the truth has groups -> no agreeing pair -> ARI 0
    ("all singletons", ["a", "a", "b", "b", "c"], [0, 1, 2, 3, 4], 0.0),
    # truth also all singletons: identical partitions -> sklearn's special case 1
    ("singletons both", ["a", "b", "c"], [0, 1, 2], 1.0),
    # contingency a:{x:2, y:1}, b:{y:2}: index = C(2,2) + C(2,2) = 2; rows C(3,2) + C(2,2) = 4;
    # cols C(2,2) + C(3,2) = 4; pairs C(5,2) = 10; expected 4*4/10 = 1.6; max (4+4)/2 = 4
    # ARI = (2 - 1.6) / (4 - 1.6) = 1/6
    ("hand 1/6", ["a", "a", "a", "b", "b"], ["x", "x", "y", "y", "y"], 1 / 6),
]


@pytest.mark.parametrize("name,true,pred,want", ORACLE_2026, ids=[c[0] for c in ORACLE_2026])
def test_score_2026_oracle_and_sklearn(name, true, pred, want):
    solution, submission = frames_2026(true, pred)
    score, table = score_2026(solution, submission)
    assert list(table.columns) == ["ARI", "n_clusters", "n_identities", "n_images"]
    assert score == pytest.approx(want, abs=1e-12)
    assert score == pytest.approx(adjusted_rand_score(true, [str(p) for p in pred]), abs=1e-12)
    row = table.loc["D"]
    assert (row["n_clusters"], row["n_identities"], row["n_images"]) == (len(set(pred)), len(set(true)), len(true))


def test_score_2026_is_mean_over_datasets():
    # D1 perfect -> 1, D2 the hand case 1/6 -> mean 7/12
    s1, p1 = frames_2026(["a", "a", "b"], [0, 0, 1], "D1")
    s2, p2 = frames_2026(["a", "a", "a", "b", "b"], ["x", "x", "y", "y", "y"], "D2")
    score, table = score_2026(pd.concat([s2, s1]), pd.concat([p2, p1]))
    assert table["ARI"].tolist() == pytest.approx([1.0, 1 / 6])
    assert score == pytest.approx(7 / 12)


def test_score_2026_same_cluster_suffix_in_two_datasets_are_different_clusters():
    # cluster_D1_0 and cluster_D2_0 differ; per dataset both partitions are perfect
    s1, p1 = frames_2026(["a", "a"], [0, 0], "D1")
    s2, p2 = frames_2026(["b", "b"], [0, 0], "D2")
    score, _ = score_2026(pd.concat([s1, s2]), pd.concat([p1, p2]))
    assert score == 1.0


def good_2026():
    return frames_2026(["a", "a", "b"], [0, 0, 1])


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda s: s.rename(columns={"cluster": "identity"}),
         r"The submission must have column cluster\. Found columns: \['image_id', 'identity'\]\. "
         r"Fix: the header line must be image_id,cluster\."),
        (lambda s: pd.concat([s, s.iloc[:1]]),
         r"The submission length must be 3\. Found 4 rows; listed twice: image_id 'D_0'\."),
        (lambda s: s.assign(image_id=["D_0", "D_1", "D_9"]),
         r"Submission column image_id is wrong\. .* First mismatch at row 2 \(line 4 of the CSV\): "
         r"expected 'D_2', found 'D_9'\."),
        (lambda s: s.assign(cluster=["cluster_D_0", np.nan, "cluster_D_1"]),
         r"Submission column cluster is empty at row 1 \(line 3 of the CSV\) \(image_id 'D_1'\)\. "
         r"Fix: write a cluster name for every image\."),
        (lambda s: s.assign(cluster=[0, 0, 1]),
         r"Submission column cluster must be a string; row 0 \(line 2 of the CSV\) holds 0\."),
        (lambda s: s.assign(cluster=["cluster_D_0", "cluster_E_0", "cluster_D_1"]),
         r"Submission column cluster must start with cluster_<dataset>_ for the image's dataset\. "
         r"At row 1 \(line 3 of the CSV\), image_id 'D_1' of dataset 'D' has cluster 'cluster_E_0'\. "
         r"Fix: name that dataset's clusters cluster_D_0, cluster_D_1, \.\.\."),
        (lambda s: s.assign(cluster=["cluster_D_0", "D_0", "cluster_D_1"]), r"has cluster 'D_0'"),
    ],
    ids=["no cluster", "length", "order", "missing", "not string", "other dataset prefix", "no prefix"],
)
def test_score_2026_format_errors(mutate, message):
    solution, submission = good_2026()
    with pytest.raises(SubmissionError, match=message):
        score_2026(solution, mutate(submission))


def test_score_2026_solution_error():
    solution, submission = good_2026()
    with pytest.raises(DataError, match=r"The solution must have column dataset\. .*image_id,identity,dataset\."):
        score_2026(solution.drop(columns="dataset"), submission)


# ----------------------------------------------------------------------------------------------------------
# Files


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_score_files_2025_keeps_identities_as_text(tmp_path):
    # "0042" vs "42" and "NA" must stay text. Known: 123 right, 0042 predicted "42" wrong -> BAKS 0.5.
    # Unknown NA: one of two queries new -> BAUS 0.5. Score sqrt(0.25) = 0.5.
    # Read as numbers, "42" == 42 == "0042" would make BAKS 1; read with NA as NaN, identity NA would vanish.
    solution = write(tmp_path / "solution.csv",
                     "image_id,identity,dataset,new_identity\n"
                     "001,123,D,False\n002,0042,D,false\n003,NA,D,True\n004,NA,D,TRUE\n")
    submission = write(tmp_path / "submission.csv",
                       "image_id,identity\n001,123\n002,42\n003,new_individual\n004,NA\n")
    task, score, table = score_files(solution, submission)
    assert task == "identification"
    assert score == pytest.approx(0.5)
    assert table.loc["D", "BAKS"] == pytest.approx(0.5)
    assert table.loc["D", "BAUS"] == pytest.approx(0.5)
    text = format_table(task, table, score)
    assert text.splitlines()[-1] == "score 0.500000"
    assert re.search(r"^D\s+0\.500000\s+0\.500000\s+0\.500000$", text, re.M)


def test_score_files_2025_perfect_with_na_identity(tmp_path):
    solution = write(tmp_path / "solution.csv",
                     "image_id,identity,dataset,new_identity\n1,NA,D,False\n2,nan,D,True\n")
    submission = write(tmp_path / "submission.csv", "\ufeffimage_id,identity\n1,NA\n2,new_individual\n")
    assert score_files(solution, submission)[1] == 1.0


def test_score_files_2026(tmp_path):
    # hand case 1/6 from ORACLE_2026 with numeric-looking identities
    solution = write(tmp_path / "solution.csv",
                     "image_id,identity,dataset\n1,10,L\n2,10,L\n3,10,L\n4,010,L\n5,010,L\n")
    submission = write(tmp_path / "submission.csv",
                       "image_id,cluster\n1,cluster_L_x\n2,cluster_L_x\n3,cluster_L_y\n4,cluster_L_y\n5,cluster_L_y\n")
    task, score, table = score_files(solution, submission)
    assert task == "clustering"
    assert score == pytest.approx(1 / 6)
    assert table.loc["L", "n_identities"] == 2  # "10" and "010" are two animals
    text = format_table(task, table, score)
    assert text.splitlines()[-1] == "score 0.166667"
    assert re.search(r"^L\s+0\.166667\s+2\s+2\s+5$", text, re.M)


def test_score_files_errors_name_the_file(tmp_path):
    solution = write(tmp_path / "solution.csv", "image_id,identity,dataset,new_identity\n1,a,D,False\n")
    empty_column = write(tmp_path / "empty_column.csv", "image_id,identity\n1,\n")
    with pytest.raises(SubmissionError, match=re.escape(f"{empty_column}: Submission column identity must be a string; "
                                                        "every value is empty")):
        score_files(solution, empty_column)
    missing = tmp_path / "missing.csv"
    with pytest.raises(SubmissionError, match=re.escape(f"{missing}: no such file. Fix: pass the path")):
        score_files(solution, missing)
    blank = write(tmp_path / "blank.csv", "")
    with pytest.raises(SubmissionError, match=re.escape(f"{blank}: the file is empty.")):
        score_files(solution, blank)
    wrong_header = write(tmp_path / "wrong.csv", "id,prediction\n1,a\n")
    with pytest.raises(SubmissionError, match="Cannot tell the task"):
        score_files(solution, wrong_header)


def test_score_files_solution_errors(tmp_path):
    submission = write(tmp_path / "submission.csv", "image_id,identity\n1,a\n")
    solution_2026 = write(tmp_path / "solution_2026.csv", "image_id,identity,dataset\n1,a,D\n")
    with pytest.raises(DataError, match=r"solution_2026\.csv: the submission .* has no new_identity column"):
        score_files(solution_2026, submission)
    bad_flag = write(tmp_path / "bad_flag.csv", "image_id,identity,dataset,new_identity\n1,a,D,yes\n")
    with pytest.raises(DataError, match=r"bad_flag\.csv: column new_identity must be True or False; "
                                        r"row 0 \(line 2 of the CSV\) holds 'yes'"):
        score_files(bad_flag, submission)
    no_dataset = write(tmp_path / "no_dataset.csv", "image_id,identity,new_identity\n1,a,False\n")
    with pytest.raises(DataError, match=r"no_dataset\.csv: The solution must have column dataset"):
        score_files(no_dataset, submission)


def test_format_table_shows_nan_as_na():
    solution, submission = frames_2025([("a", False, "a")])
    score, table = score_2025(solution, submission)
    lines = format_table("identification", table, score).splitlines()
    assert lines[1].split() == ["dataset", "BAKS", "BAUS", "score"]
    assert lines[2].split() == ["D", "1.000000", "n/a", "0.000000"]
    assert lines[-1] == "score 0.000000"


# ----------------------------------------------------------------------------------------------------------
# Retrieval


def test_rank_k_hand_cases():
    ranked = np.array([["a", "b", "c"], ["b", "a", "c"], ["c", "b", "a"], ["a", "b", "c"]], dtype=object)
    queries = ["a", "a", "a", "z"]  # first hits at ranks 1, 2, 3; "z" is not in the gallery
    # z excluded: R-1 = 1/3, R-2 = 2/3, R-3 = 3/3; R-20 with only 3 columns uses all 3
    got = rank_k(ranked, queries, ks=(1, 2, 3, 20), gallery_labels=["a", "b", "c", "c"])
    assert got == pytest.approx({"R-1": 1 / 3, "R-2": 2 / 3, "R-3": 1.0, "R-20": 1.0})
    # without gallery_labels z counts as a miss: 1/4, 2/4, 3/4
    assert rank_k(ranked, queries, ks=(1, 2, 3)) == pytest.approx({"R-1": 0.25, "R-2": 0.5, "R-3": 0.75})
    # default ks; per-image ranking with repeated labels: "a" first appears at rank 3
    assert rank_k(np.array([["b", "b", "a", "c", "d"]], dtype=object), ["a"]) == {"R-1": 0.0, "R-5": 1.0, "R-20": 1.0}
    assert math.isnan(rank_k(ranked[:1], ["z"], ks=(1,), gallery_labels=["a"])["R-1"])
    with pytest.raises(ValueError, match="must be \\[Q, K\\]"):
        rank_k(ranked, ["a"])


def test_mean_average_precision_hand_cases():
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    gallery = ["a", "b", "a", "b"]
    # query a: positives at ranks 1, 3 -> (1/1 + 2/3) / 2 = 5/6
    # query b: positives at ranks 2, 4 -> (1/2 + 2/4) / 2 = 1/2
    # query z: no positive -> excluded.  mAP = (5/6 + 1/2) / 2 = 2/3
    assert mean_average_precision(scores, gallery, ["a", "b", "z"]) == pytest.approx(2 / 3)
    assert math.isnan(mean_average_precision(scores[:1], gallery, ["z"]))


@pytest.mark.parametrize(
    "row,gallery,want",
    [
        # the positive ties with a negative at the top: the block of 2 is ranked at once -> precision 1/2,
        # whichever of the two comes first in gallery order
        ([0.5, 0.5, 0.1], ["a", "b", "b"], 0.5),
        ([0.5, 0.5, 0.1], ["b", "a", "b"], 0.5),
        # block of 3 holding both positives -> each gets precision 2/3 -> AP 2/3
        ([0.5, 0.5, 0.5, 0.1], ["b", "a", "a", "b"], 2 / 3),
        # everything tied: precision = share of positives = 1/4
        ([0.3, 0.3, 0.3, 0.3], ["b", "b", "a", "b"], 0.25),
    ],
)
def test_mean_average_precision_ties(row, gallery, want):
    scores = np.array([row], dtype=np.float32)
    got = mean_average_precision(scores, gallery, ["a"])
    assert got == pytest.approx(want)
    assert got == pytest.approx(average_precision_score(np.array(gallery) == "a", row))


def test_mean_average_precision_rejects_bad_input():
    with pytest.raises(ValueError, match="scores must be \\[Q, N\\]"):
        mean_average_precision(np.zeros((2, 3), np.float32), ["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        mean_average_precision(np.array([[np.nan, 1.0]], np.float32), ["a", "b"], ["a"])
