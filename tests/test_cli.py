"""End to end through the command line, on the tiny synthetic competition (real lite0 weights)."""

from __future__ import annotations

import json

import pytest

from kit.cli import main
from kit.io import read_csv_str

FAST = ["--set", "embed.image_size=64", "--set", "embed.num_workers=0"]


@pytest.mark.slow
def test_submit_then_score(tiny_2025, tmp_path, capsys):
    out = tmp_path / "sub.csv"
    assert main(["submit", str(tiny_2025), "--out", str(out), *FAST]) == 0
    sub = read_csv_str(out)
    sample = read_csv_str(tiny_2025 / "sample_submission.csv")
    assert list(sub.columns) == ["image_id", "identity"]
    assert list(sub["image_id"]) == list(sample["image_id"])  # one row per query, in sample order
    capsys.readouterr()
    assert main(["score", str(tiny_2025 / "solution.csv"), str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("score ")
    assert 0.0 <= float(last.split()[1]) <= 1.0


@pytest.mark.slow
def test_validate_writes_metrics_json(tiny_2025, tmp_path, capsys):
    rep = tmp_path / "report"
    assert main(["validate", str(tiny_2025), "--report", str(rep), *FAST,
                 "--set", "validate.n_unknown=4"]) == 0
    metrics = json.loads((rep / "metrics.json").read_text())
    assert set(metrics) == {"SynLynx", "SynSalamander", "SynTurtle"}
    for pipes in metrics.values():
        assert set(pipes["global"]) >= {"R-1", "R-5", "R-20", "mAP", "BAKS", "BAUS", "score"}
        assert all(0.0 <= v <= 1.0 for v in pipes["global"].values() if v == v)


def test_errors_are_one_line_not_a_traceback(tmp_path, capsys):
    assert main(["submit", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "metadata.csv not found" in err and "Traceback" not in err


def test_score_rejects_wrong_order(tiny_2025, tmp_path, capsys):
    sample = read_csv_str(tiny_2025 / "sample_submission.csv")
    sample.iloc[::-1].to_csv(tmp_path / "rev.csv", index=False)
    assert main(["score", str(tiny_2025 / "solution.csv"), str(tmp_path / "rev.csv")]) == 2
    assert "same order" in capsys.readouterr().err


@pytest.mark.slow
def test_submit_never_reads_the_solution(tiny_2025, tmp_path):
    """The answer key sits beside the data; the pipeline must not use it: with solution.csv deleted, submit runs
    and writes the very same file."""
    import shutil

    comp = tmp_path / "comp"
    shutil.copytree(tiny_2025, comp)
    (comp / "solution.csv").unlink()
    assert main(["submit", str(tiny_2025), "--out", str(tmp_path / "with.csv"), *FAST]) == 0
    assert main(["submit", str(comp), "--out", str(tmp_path / "without.csv"), *FAST]) == 0
    assert (tmp_path / "with.csv").read_text() == (tmp_path / "without.csv").read_text()


@pytest.mark.parametrize("target, option", [("validate", "--report"), ("submit", "--provenance"),
                                            ("review", "--out")])
def test_make_targets_keep_a_path_with_spaces_one_argument(target, option, tmp_path):
    """`make validate DATA="my photos/comp"` passes the path to kit as one argument (it used to split at the space
    and fail in argparse). `make -n` prints the command without running it; bash then lists the words it would
    pass to kit, each on its own line."""
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("no make here")
    repo = Path(__file__).resolve().parent.parent
    data = tmp_path / "my photos" / "the comp"
    proc = subprocess.run(["make", "-n", "-o", ".venv/.installed", target, f"DATA={data}", "CONFIG=my configs/a.yaml",
                           "SET=embed.batch_size=4 rerank.extractor=[sift]"], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(".venv/bin/kit "))
    words = subprocess.run(["bash", "-c", f"printf '%s\\n' {line.split(' ', 1)[1]}"], capture_output=True,
                           text=True, cwd=tmp_path).stdout.splitlines()
    assert words[:2] == [target, str(data)], words
    assert words[words.index("--config") + 1] == "my configs/a.yaml"
    assert [words[i + 1] for i, w in enumerate(words) if w == "--set"] == ["embed.batch_size=4",
                                                                         "rerank.extractor=[sift]"]
    assert words[words.index(option) + 1] == {"validate": "reports/the comp", "submit": "submissions",
                                              "review": "reviews/the comp"}[target]
