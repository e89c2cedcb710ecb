"""kit/review/decisions.py: decisions.json read, checked against a competition (one error listing every problem,
nothing written), and applied; the CLI refuses a bad file before any pipeline runs."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from kit.cli import main
from kit.data import read_competition
from kit.errors import DecisionsError
from kit.review import apply_identification, load_decisions
from kit.schema import NEW_INDIVIDUAL


@pytest.fixture(scope="module")
def meta25(tiny_2025):
    return read_competition(tiny_2025)


@pytest.fixture(scope="module")
def meta26(tiny_2026):
    return read_competition(tiny_2026)


def write(tmp_path, obj, name="decisions.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def queries(meta, dataset=None):
    q = meta[meta["split"] == "query"]
    return q if dataset is None else q[q["dataset"] == dataset]


def identity_of(meta, dataset):
    return sorted(meta.loc[(meta["split"] == "database") & (meta["dataset"] == dataset), "identity"].unique())[0]


def test_a_good_2025_file_loads_and_applies_exactly_its_queries(meta25, tmp_path):
    q = queries(meta25, "SynLynx")
    ident = identity_of(meta25, "SynLynx")
    ids = q["image_id"].tolist()[:3]
    path = write(tmp_path, {"decisions": [{"image_id": ids[0], "identity": ident},
                                          {"image_id": ids[1], "identity": NEW_INDIVIDUAL},
                                          {"image_id": ids[1], "identity": NEW_INDIVIDUAL}],  # repeated, agreeing
                            "kit": {"layout": "2025"}})
    dec = load_decisions(path, meta25)
    assert dec.identities == {ids[0]: ident, ids[1]: NEW_INDIVIDUAL}
    summary = dec.summary()
    assert summary["files"][0]["sha1"] == hashlib.sha1(path.read_bytes()).hexdigest()
    assert summary["decisions"] == 2 and summary["links"] == {"must": 0, "cannot": 0}
    pred = pd.DataFrame({"image_id": queries(meta25)["image_id"], "identity": "whatever"})
    pred.loc[pred["image_id"] == ids[1], "identity"] = NEW_INDIVIDUAL  # already what the human says
    out, changed = apply_identification(pred, dec)
    assert changed == 1
    diff = out["identity"] != pred["identity"]
    assert out.loc[diff, "image_id"].tolist() == [ids[0]] and out.loc[diff, "identity"].tolist() == [ident]
    assert list(out["image_id"]) == list(pred["image_id"])


def test_a_good_2026_file_gives_unique_links(meta26, tmp_path):
    t = meta26.loc[(meta26["split"] == "test") & (meta26["dataset"] == "SynLynx"), "image_id"].tolist()
    path = write(tmp_path, {"links": [{"a": t[0], "b": t[1], "same": True}, {"a": t[1], "b": t[0], "same": True},
                                      {"a": t[2], "b": t[3], "same": False}]})
    dec = load_decisions([path], meta26)
    assert len(dec.links) == 2 and dec.links["same"].tolist() == [True, False]
    assert dec.summary()["links"] == {"must": 1, "cannot": 1}


def test_every_problem_is_listed_in_one_error(meta25, tmp_path):
    q = queries(meta25, "SynLynx")["image_id"].tolist()
    db_photo = meta25.loc[meta25["split"] == "database", "image_id"].iloc[0]
    other = identity_of(meta25, "SynTurtle")
    path = write(tmp_path, {"decisions": [{"image_id": "no-such-photo", "identity": NEW_INDIVIDUAL},
                                          {"image_id": db_photo, "identity": NEW_INDIVIDUAL},
                                          {"image_id": q[0], "identity": other},
                                          {"image_id": q[1], "identity": 7},
                                          {"image_id": q[2], "identity": NEW_INDIVIDUAL}],
                            "decison": []})
    with pytest.raises(DecisionsError) as err:
        load_decisions(path, meta25)
    msg = str(err.value)
    assert "5 problem(s), nothing was written" in msg
    assert "unknown key 'decison'" in msg
    assert "'no-such-photo' is not in" in msg
    assert f"{db_photo!r} is a database photo" in msg
    assert f"identity {other!r}, which is not in dataset 'SynLynx'" in msg
    assert 'decisions[3]' in msg and '"identity": a text' in msg


def test_one_photo_decided_two_ways_is_an_error_across_files(meta25, tmp_path):
    i = queries(meta25, "SynLynx")["image_id"].iloc[0]
    a = write(tmp_path, {"decisions": [{"image_id": i, "identity": NEW_INDIVIDUAL}]}, "a.json")
    b = write(tmp_path, {"decisions": [{"image_id": i, "identity": identity_of(meta25, "SynLynx")}]}, "b.json")
    with pytest.raises(DecisionsError, match=f"{i!r} is decided twice"):
        load_decisions([a, b], meta25)


def test_contradictory_links_are_refused_with_the_chain(meta26, tmp_path):
    t = meta26.loc[(meta26["split"] == "test") & (meta26["dataset"] == "SynLynx"), "image_id"].tolist()
    z = meta26.loc[(meta26["split"] == "test") & (meta26["dataset"] == "SynTurtle"), "image_id"].iloc[0]
    path = write(tmp_path, {"links": [{"a": t[0], "b": t[1], "same": True}, {"a": t[1], "b": t[2], "same": True},
                                      {"a": t[2], "b": t[0], "same": False},
                                      {"a": t[3], "b": t[4], "same": True}, {"a": t[4], "b": t[3], "same": False},
                                      {"a": t[5], "b": t[5], "same": False},
                                      {"a": t[5], "b": z, "same": True}]})
    with pytest.raises(DecisionsError) as err:
        load_decisions(path, meta26)
    msg = str(err.value)
    assert f"contradicts the must-links {t[2]!r} = {t[1]!r} = {t[0]!r}" in msg
    assert f"{t[3]!r} and {t[4]!r} are the same individual and also that they are not" in msg
    assert "apart from itself" in msg
    assert "datasets 'SynLynx' and 'SynTurtle'" in msg


def test_a_file_of_the_other_task_or_competition_is_refused(meta25, meta26, tmp_path):
    q = queries(meta25)["image_id"].iloc[0]
    train = meta26.loc[meta26["split"] == "train", "image_id"].iloc[0]
    test = meta26.loc[meta26["split"] == "test", "image_id"].iloc[0]
    cases = [
        (meta25, {"links": [{"a": q, "b": q, "same": True}]}, "links are for the 2026 clustering"),
        (meta26, {"decisions": [{"image_id": test, "identity": NEW_INDIVIDUAL}]}, "the 2025 task takes"),
        (meta26, {"links": [{"a": train, "b": test, "same": True}]}, f"{train!r} is a train photo"),
        (meta25, {"decisions": [], "kit": {"layout": "2026", "competition": "c2026"}}, "written for a 2026"),
        (meta25, {"decisions": [{"image_id": "elsewhere-1", "identity": "x"}]}, "from another competition"),
        (meta25, {"decisions": [], "kit": {"layout": "2025", "answers": True}}, "from a validation review"),
        (meta25, "[1, 2]", "top level must be an object"),
        (meta25, "{not json", "not a JSON file"),
    ]
    for meta, obj, want in cases:
        with pytest.raises(DecisionsError, match=want):
            load_decisions(write(tmp_path, obj), meta)
    with pytest.raises(DecisionsError, match="no such file"):
        load_decisions(tmp_path / "missing.json", meta25)


def test_submit_with_bad_decisions_stops_before_the_pipeline_and_writes_nothing(tiny_2025, tmp_path, capsys):
    path = write(tmp_path, {"decisions": [{"image_id": "nope", "identity": NEW_INDIVIDUAL}]})
    out = tmp_path / "sub.csv"
    assert main(["submit", str(tiny_2025), "--out", str(out), "--decisions", str(path)]) == 2
    err = capsys.readouterr()
    assert err.err.startswith("error: decisions") and "Traceback" not in err.err
    assert "local matching" not in err.out  # no plan was made: the check came first
    assert not out.exists()
