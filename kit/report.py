"""The ``kit validate --report DIR`` report: metrics.json, openset.json, report.md and PNG plots.

metrics.json keeps a fixed shape, ``{dataset: {pipeline: {metric: value}}}`` with metrics R-1, R-5, R-20,
mAP, BAKS, BAUS, score. Everything else goes to openset.json (the open-set calibration and how it fared on
the validation queries) and to report.md, which embeds the plots:

- ``metrics.png``: per dataset, each metric for each pipeline present;
- ``tau_<dataset>.png``: sqrt(BAKS*BAUS) against tau on the validation queries, with the calibrated tau and
  the best tau in hindsight marked, and the held-out calibration curve it was chosen on;
- ``hist_<dataset>.png``: the open-set score of validation queries, known (top-1 right / wrong) vs unknown.

``openset_analysis`` is the only place that reads the validation answers; it never feeds back into a run.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import openset
from .io import atomic_path, safe_file_name, write_json, write_text

METRICS = ("R-1", "R-5", "R-20", "mAP", "BAKS", "BAUS", "score")
PIPE_COLOURS = {"global": "#4C72B0", "reranked": "#DD8452", "fused": "#55A868"}


def _num(x) -> float | None:
    """JSON-safe float: None for NaN/inf."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def openset_analysis(details: dict, solution: pd.DataFrame) -> dict:
    """How the calibrated open-set decision fared on the validation queries, per dataset and pipeline.

    details: pipeline.validate's per-dataset details ({dataset: {pipeline: identify's entry}});
    solution: the validation answer key (image_id, identity, dataset, new_identity), row-aligned with the
    queries (``query_index``). Returns {dataset: {pipeline: {...}}} with the chosen candidate, tau, its
    held-out estimate and bootstrap interval, the validation score at tau, the best tau in hindsight and
    its score (gap = hindsight - achieved), the hindsight score of the plain top-1 score, each candidate's
    validation score at its own calibrated tau, the estimated and the true share of unknown queries, and
    the arrays the plots need (under "_plot").
    """
    out: dict[str, dict] = {}
    for name, per_pipe in details.items():
        for pipe, det in per_pipe.items():
            if "openset_score" not in det:
                continue
            qi = det["query_index"]
            truth = solution.loc[qi, "identity"].to_numpy(dtype=object)
            unknown = solution.loc[qi, "new_identity"].to_numpy(bool)
            correct = (det["evidence"]["top_identity"] == truth) & ~unknown
            s = det["openset_score"]
            tau = det["tau"]
            baks, baus, achieved = openset.score_at(s, correct, unknown, truth, tau)
            h_tau, h_score = openset.choose_threshold(s, correct, unknown, truth)
            _, naive = openset.choose_threshold(det["features"]["top1"], correct, unknown, truth)
            cal = det.get("calibration") or {}
            cands = {}
            for cname, c in (cal.get("candidates") or {}).items():
                cs = c["scorer"](det["features"])
                cands[cname] = {"cv": _num(c["cv"]), "insample": _num(c["insample"]), "tau": _num(c["tau"]),
                                "validation": _num(openset.score_at(cs, correct, unknown, truth, c["tau"])[2]),
                                "hindsight": _num(openset.choose_threshold(cs, correct, unknown, truth)[1])}
            scorer = det.get("scorer")
            taus, bk, bu = openset.score_curve(s, correct, unknown, truth)
            out.setdefault(name, {})[pipe] = {
                "candidate": det.get("candidate"), "tau": _num(tau),
                "weights": None if scorer is None or scorer.coef is None else dict(
                    zip(scorer.features, map(float, scorer.coef))),
                "heldout_score": _num(det.get("heldout_score")),
                "bootstrap": {k: _num(v) for k, v in (cal.get("bootstrap") or {}).items()},
                "n_splits": det.get("n_splits"), "n_unknown_heldout": det.get("n_unknown"),
                "n_known_heldout": det.get("n_known"),
                "validation": {"BAKS": _num(baks), "BAUS": _num(baus), "score": _num(achieved)},
                "hindsight": {"tau": _num(h_tau), "score": _num(h_score), "gap": _num(h_score - achieved)},
                "top1_hindsight_score": _num(naive),
                "unknown_share": {"estimated": _num(det.get("unknown_share")),
                                  "true": _num(unknown.mean()) if len(unknown) else None},
                "query_fraction": _num(det.get("query_fraction")),
                "candidates": cands, "note": det.get("note"),
                "head": det.get("head"),  # the submitted pipeline only: whether it took the head's predictions, and why
                "pair_model": det.get("pair_model"),  # method, weights or gain, CV MRR per method (write_json: strict)
                "_plot": {"score": s, "unknown": unknown, "correct": correct, "curve": (taus, bk, bu),
                          "cal_curve": cal.get("curve")},
            }
    return out


# ---------------------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg)


def _save(fig, path: Path) -> Path:
    """Save a figure through a temporary file and a rename (never a half-written PNG), then close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")  # the .tmp suffix says nothing about the format
    finally:
        _plt().close(fig)
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(result: dict, path: Path) -> Path:
    """Grouped bars per dataset: each metric, one bar per pipeline present."""
    plt = _plt()
    names = list(result)
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.8 * len(names)), squeeze=False)
    for ax, ds in zip(axes[:, 0], names):
        pipes = list(result[ds])
        width = 0.8 / max(1, len(pipes))
        x = np.arange(len(METRICS))
        for j, p in enumerate(pipes):
            vals = [result[ds][p].get(m, np.nan) for m in METRICS]
            vals = [np.nan if v is None else v for v in vals]
            bars = ax.bar(x + (j - (len(pipes) - 1) / 2) * width, vals, width, label=p,
                          color=PIPE_COLOURS.get(p, None))
            for b, v in zip(bars, vals):
                if np.isfinite(v):
                    ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.2f}", ha="center", va="bottom",
                            fontsize=7)
        ax.set_xticks(x, METRICS)
        ax.set_ylim(0, 1.12)
        ax.set_title(ds, fontsize=10, loc="left")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper right", ncol=len(pipes))
    fig.tight_layout()
    return _save(fig, path)


def _finite_range(*arrays) -> tuple[float, float]:
    vals = np.concatenate([np.asarray(a, np.float64)[np.isfinite(a)] for a in arrays if a is not None and len(a)])
    lo, hi = float(vals.min()), float(vals.max())
    pad = 0.05 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def plot_tau(ds: str, entries: dict, path: Path) -> Path:
    """Per pipeline: score, BAKS, BAUS against tau on the validation queries; calibration curve dashed."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(entries), figsize=(5.6 * len(entries), 5.0), squeeze=False)
    for ax, (pipe, e) in zip(axes[0], entries.items()):
        taus, bk, bu = e["_plot"]["curve"]
        cal = e["_plot"]["cal_curve"]
        lo, hi = _finite_range(e["_plot"]["score"], [e["tau"]] if e["tau"] is not None else [],
                               None if cal is None else cal[0])
        comp = np.nan_to_num(np.sqrt(bk * bu))
        t = np.clip(taus, lo, hi)
        # score_curve's value at taus[i] holds for every tau in (taus[i-1], taus[i]]: a "pre" step
        ax.step(t, comp, where="pre", color="black", lw=2, label="score, validation")
        ax.step(t, np.nan_to_num(bk), where="pre", color="#4C72B0", lw=1, alpha=0.7, label="BAKS, validation")
        ax.step(t, np.nan_to_num(bu), where="pre", color="#C44E52", lw=1, alpha=0.7, label="BAUS, validation")
        if cal is not None:  # sampled between held-out scores: drawn as a line
            ax.plot(np.clip(cal[0], lo, hi), cal[1], color="grey", lw=1.5, ls="--",
                    label="score, held-out calibration (resample mean)")
        if e["tau"] is not None:
            ax.axvline(e["tau"], color="#55A868", lw=2,
                       label=f"chosen tau={e['tau']:.3f} -> {e['validation']['score']:.3f}")
            b = e["bootstrap"]
            if b.get("tau_lo") is not None and b.get("tau_hi") is not None:
                ax.axvspan(max(b["tau_lo"], lo), min(b["tau_hi"], hi), color="#55A868", alpha=0.12,
                           label="bootstrap 90% of tau")
        h = e["hindsight"]
        if h["tau"] is not None:
            ax.plot([np.clip(h["tau"], lo, hi)], [h["score"]], marker="*", ms=14, color="#DD8452", ls="none",
                    label=f"best in hindsight tau={h['tau']:.3f} -> {h['score']:.3f}")
        ax.set_xlim(lo, hi)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"tau on open-set score ({e['candidate']})")
        ax.set_ylabel("metric")
        ax.set_title(f"{ds} / {pipe}: score vs tau", fontsize=10, loc="left")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def plot_hist(ds: str, entries: dict, path: Path) -> Path:
    """Per pipeline: histogram of the open-set score for known (top-1 right / wrong) and unknown queries."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(entries), figsize=(5.2 * len(entries), 3.6), squeeze=False)
    for ax, (pipe, e) in zip(axes[0], entries.items()):
        s, u, c = (e["_plot"][k] for k in ("score", "unknown", "correct"))
        lo, hi = _finite_range(s)
        bins = np.linspace(lo, hi, 31)
        groups = [(s[~u & c], "known, top-1 right", "#1F4E9A"), (s[~u & ~c], "known, top-1 wrong", "#8C8C8C"),
                  (s[u], "unknown", "#C44E52")]
        for vals, label, colour in groups:  # each group sums to 1, so a small group stays visible
            if len(vals):
                w = np.full(len(vals), 1.0 / len(vals))
                ax.hist(vals, bins=bins, weights=w, alpha=0.18, color=colour)
                ax.hist(vals, bins=bins, weights=w, histtype="step", lw=2, color=colour,
                        label=f"{label} (n={len(vals)})")
        if e["tau"] is not None:
            ax.axvline(e["tau"], color="#55A868", lw=2, label=f"chosen tau={e['tau']:.3f}")
        ax.set_xlabel(f"open-set score ({e['candidate']}); below tau = new_individual")
        ax.set_ylabel("share of the group's queries")
        ax.set_title(f"{ds} / {pipe}: open-set score of validation queries", fontsize=10, loc="left")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------------
# The report


def _fmt(x, nd: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def _markdown(result: dict, analysis: dict, plots: dict, header: dict) -> str:
    lines = ["# kit validate report", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()] + [""]
    lines += ["## Metrics (validation queries)", "",
              "| dataset | pipeline | " + " | ".join(METRICS) + " |", "|---|---|" + "---:|" * len(METRICS)]
    for ds, pipes in result.items():
        for p, m in pipes.items():
            lines.append(f"| {ds} | {p} | " + " | ".join(_fmt(m.get(k)) for k in METRICS) + " |")
    lines += ["", "![metrics](metrics.png)", ""]
    lines += ["## Open-set decision", "",
              "tau and the open-set score are chosen per dataset on held-out splits of the validation database"
              " (whole identities held out as unknowns). *held-out* is the cross-validated estimate made "
              "before any validation query was seen; *achieved* is the validation score at that tau; "
              "*hindsight* is the best tau chosen by looking at the validation answers (same score); "
              "*top-1 hindsight* is the naive baseline: the plain best identity score with its best tau "
              "in hindsight.", "",
              "| dataset | pipeline | winner | tau (bootstrap 90%) | held-out (90%) | achieved | hindsight "
              "| gap | top-1 hindsight | unknown share est./true | splits, unknown/known imgs |",
              "|---|---|---|---|---|---:|---:|---:|---:|---|---|"]
    for ds, pipes in analysis.items():
        for p, e in pipes.items():
            b = e["bootstrap"]
            lines.append(
                f"| {ds} | {p} | {e['candidate']} | {_fmt(e['tau'])} ({_fmt(b.get('tau_lo'))}–"
                f"{_fmt(b.get('tau_hi'))}) | {_fmt(e['heldout_score'])} ({_fmt(b.get('score_lo'))}–"
                f"{_fmt(b.get('score_hi'))}) | {_fmt(e['validation']['score'])} | {_fmt(e['hindsight']['score'])} "
                f"| {_fmt(e['hindsight']['gap'])} | {_fmt(e['top1_hindsight_score'])} | "
                f"{_fmt(e['unknown_share']['estimated'], 2)}/{_fmt(e['unknown_share']['true'], 2)} | "
                f"{e['n_splits']}, {e['n_unknown_heldout']}/{e['n_known_heldout']} |")
    lines += ["", "### Candidates", "",
              "Each open-set score candidate: cross-validated held-out score (what picks the winner), and on "
              "the validation queries its score at its own calibrated tau and at its best tau in hindsight. "
              "`logistic_qq` adds query-side evidence (query-query similarity).", "",
              "| dataset | pipeline | candidate | held-out CV | validation at tau | validation hindsight |",
              "|---|---|---|---:|---:|---:|"]
    for ds, pipes in analysis.items():
        for p, e in pipes.items():
            for c, v in e["candidates"].items():
                mark = " **(chosen)**" if c == e["candidate"] else ""
                lines.append(f"| {ds} | {p} | {c}{mark} | {_fmt(v['cv'])} | {_fmt(v['validation'])} | "
                             f"{_fmt(v['hindsight'])} |")
    for ds in analysis:
        lines += ["", f"### {ds}", ""]
        if ds in plots:
            lines += [f"![tau]({plots[ds][0]})", "", f"![histogram]({plots[ds][1]})"]
    return "\n".join(lines) + "\n"


def write_report(out: str | Path, result: dict, info: dict, header: dict | None = None) -> dict[str, Path]:
    """Write metrics.json, openset.json, report.md and the PNGs into ``out``; return {name: path}.

    result: pipeline.validate's metrics; info: its second value (details, solution); header: lines for the top
    of report.md (data folder, model, timings).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    analysis = openset_analysis(info["details"], info["solution"])
    written = {"metrics.json": write_json(result, out / "metrics.json")}
    public = {ds: {p: {k: v for k, v in e.items() if k != "_plot"} for p, e in pipes.items()}
              for ds, pipes in analysis.items()}
    written["openset.json"] = write_json(public, out / "openset.json")
    written["metrics.png"] = plot_metrics(result, out / "metrics.png")
    plots = {}
    for ds, entries in analysis.items():
        tau_png, hist_png = (f"{kind}_{safe_file_name(ds, 'dataset')}.png" for kind in ("tau", "hist"))
        written[tau_png] = plot_tau(ds, entries, out / tau_png)
        written[hist_png] = plot_hist(ds, entries, out / hist_png)
        plots[ds] = (tau_png, hist_png)
    written["report.md"] = write_text(_markdown(result, public, plots, header or {}), out / "report.md")
    return written


# ---------------------------------------------------------------------------------------------------------
# The 2026 (clustering) report


def cluster_markdown(result: dict) -> str:
    """A short markdown section: ARI and predicted vs true cluster counts per dataset."""
    lines = ["## Clustering validation (AnimalCLEF 2026 mode)", "",
             "Identity-disjoint split of the train identities; ARI = sklearn adjusted_rand_score.", "",
             "| dataset | ARI | clusters (pred / true) | images | method | cut | held-out ARI | fallback ARI |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in result.items():
        if name == "mean":
            continue
        fb = r.get("ARI_fallback")
        lines.append(f"| {name} | {r['ARI']:.4f} | {r['n_clusters']} / {r['n_identities']} | {r['n_images']} | "
                     f"{r['method'] or 'n/a'} | {_fmt(r['cut'], 4)} | {_fmt(r['heldout_ARI'], 4)} | {_fmt(fb, 4)} |")
    lines += ["", f"Mean ARI over datasets: {result['mean']['ARI']:.4f}", ""]
    return "\n".join(lines)


def write_cluster_report(out: str | Path, result: dict) -> dict[str, Path]:
    """Write cluster_metrics.json and cluster_report.md into ``out`` (a 2026 ``kit validate --report``)."""
    out = Path(out)
    return {"cluster_metrics.json": write_json(result, out / "cluster_metrics.json"),
            "cluster_report.md": write_text(cluster_markdown(result), out / "cluster_report.md")}
