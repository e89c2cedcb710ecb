"""The validate report: files, fixed metrics.json shape, analysis numbers, plots that open."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kit import openset
from kit.config import DEFAULTS
from kit.report import METRICS, openset_analysis, write_report


def _world(seed, n_id=30, per=4):
    rng = np.random.default_rng(seed)
    unknown = np.repeat(np.arange(n_id) % 2 == 1, per)
    ident = np.repeat([f"i{seed}_{i}" for i in range(n_id)], per)
    correct = ~unknown & (rng.random(len(ident)) < 0.7)
    feats = {"top1": rng.normal(0.7, 0.05, len(ident)) + 0.05 * correct,
             "margin": np.where(correct, rng.normal(0.1, 0.03, len(ident)), rng.normal(0.03, 0.03, len(ident)))}
    return feats, correct, unknown, ident


def _details_and_solution():
    """One dataset, one pipeline: calibrated on one world, applied to another (as identify would)."""
    oc = {**DEFAULTS["openset"], "bootstrap": 30, "cv_bootstrap": 0, "cv_repeats": 1}
    feats, correct, unknown, ident = _world(0)
    cal = openset.fit_decision(feats, correct, unknown, ident, ident, oc)
    vfeats, vcorrect, vunknown, vident = _world(1)
    top = np.where(vcorrect, vident, "someone_else").astype(object)
    det = {"tau": cal["tau"], "heldout_score": cal["heldout_score"], "candidate": cal["candidate"],
           "scorer": cal["scorer"], "n_unknown": int(unknown.sum()), "n_known": int((~unknown).sum()),
           "n_splits": 1, "unknown_share": float("nan"), "query_fraction": 0.3, "calibration": cal,
           "evidence": {"top_identity": top}, "query_index": np.arange(len(vident)),
           "features": vfeats, "openset_score": cal["scorer"](vfeats)}
    solution = pd.DataFrame({"image_id": [f"{i}" for i in range(len(vident))], "identity": vident,
                             "dataset": "D", "new_identity": vunknown})
    return {"D": {"global": det}}, solution


def test_analysis_numbers():
    details, solution = _details_and_solution()
    e = openset_analysis(details, solution)["D"]["global"]
    det = details["D"]["global"]
    truth, unknown = solution["identity"].to_numpy(), solution["new_identity"].to_numpy()
    correct = (det["evidence"]["top_identity"] == truth) & ~unknown
    expected = openset.score_at(det["openset_score"], correct, unknown, truth, det["tau"])
    assert np.isclose(e["validation"]["score"], expected[2])
    assert e["hindsight"]["score"] >= e["validation"]["score"] - 1e-12 and e["hindsight"]["gap"] >= -1e-12
    assert e["unknown_share"]["true"] == 0.5 and e["candidate"] == det["candidate"]
    assert set(e["candidates"]) == set(det["calibration"]["candidates"])


def test_write_report_files_and_fixed_metrics_shape(tmp_path):
    details, solution = _details_and_solution()
    result = {"D": {"global": {m: 0.5 for m in METRICS}}}
    written = write_report(tmp_path / "rep", result, {"details": details, "solution": solution}, {"data": "x"})
    rep = tmp_path / "rep"
    assert set(written) == {"metrics.json", "openset.json", "report.md", "metrics.png", "tau_D.png", "hist_D.png"}
    assert json.loads((rep / "metrics.json").read_text()) == result  # shape untouched
    extra = json.loads((rep / "openset.json").read_text())
    assert extra["D"]["global"]["candidate"] == details["D"]["global"]["candidate"]
    md = (rep / "report.md").read_text()
    assert "![tau](tau_D.png)" in md and "![histogram](hist_D.png)" in md and "| D | global |" in md
    for png in ("metrics.png", "tau_D.png", "hist_D.png"):
        with Image.open(rep / png) as im:
            assert im.format == "PNG" and im.size[0] >= 400 and im.size[1] >= 200
    assert not list(rep.glob(".*tmp*"))  # no temporary file left behind


@pytest.mark.slow
def test_validate_report_through_the_cli(tiny_2025, tmp_path):
    from kit.cli import main

    rep = tmp_path / "report"
    assert main(["validate", str(tiny_2025), "--report", str(rep), "--set", "embed.image_size=64",
                 "--set", "embed.num_workers=0", "--set", "validate.n_unknown=4",
                 "--set", "openset.bootstrap=20", "--set", "openset.cv_bootstrap=0"]) == 0
    names = {p.name for p in rep.iterdir()}
    for ds in ("SynLynx", "SynSalamander", "SynTurtle"):
        assert {f"tau_{ds}.png", f"hist_{ds}.png"} <= names
    assert {"metrics.json", "openset.json", "report.md", "metrics.png"} <= names
    extra = json.loads((rep / "openset.json").read_text())
    for ds, pipes in extra.items():
        e = pipes["global"]
        assert e["candidate"] in openset.CANDIDATES and e["tau"] is not None
        # the pair model that made P(same individual) is on record: its method and each method's CV MRR
        pm = e["pair_model"]
        assert pm["method"] in ("logistic", "lightgbm", "mean", "constant") and isinstance(pm["cv_mrr"], dict)
