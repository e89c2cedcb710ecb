"""The ``kit`` command line. Each subcommand is a thin shell over one stage's public functions."""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import KitError, KitWarning, OutputError
from .outputs import deliver
from .schema import CLUSTERING, LAYOUT_SPLITS, NEW_INDIVIDUAL

if TYPE_CHECKING:
    import pandas as pd


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (see configs/); defaults to configs/default.yaml's settings")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set embed.batch_size=64 (repeatable)")


def _conf(args) -> dict:
    from .config import load_config

    return load_config(args.config, args.set)


def _require_writable(path: str | Path | None, option: str, folder: bool = False) -> None:
    """Stop before any work when an output cannot be written there (kit.io.write_problem tries it for real)."""
    from .io import write_problem

    if path is not None and (why := write_problem(path, folder)):
        what = "a folder" if folder else "a file path"
        raise OutputError(f"{option} {path}: {why}. Nothing was run: give {option} {what} you can write "
                          "(another location, or fix the folder's permissions or mount)")


def cmd_config(args) -> int:
    from .config import dump_config

    print(dump_config(_conf(args)), end="")
    return 0


def cmd_synth(args) -> int:
    from .synth import make_competition

    _require_writable(args.out, "synth OUT", folder=True)
    t = time.perf_counter()
    out = make_competition(args.out, layout=args.layout, seed=args.seed, identities=args.identities,
                           image_size=args.size)
    print(f"wrote synthetic {args.layout} competition to {out} in {time.perf_counter() - t:.1f}s")
    return 0


def cmd_import(args) -> int:
    from .data import import_folders

    _require_writable(args.out, "import-folders OUT", folder=True)
    out, n = import_folders(args.src, args.out, args.dataset, args.unknown_fraction, args.query_fraction,
                            args.seed, args.layout, args.species)
    labelled, unlabelled = LAYOUT_SPLITS[args.layout]
    print(f"{n['dataset']}: {n['identities']} identities ({n['new_identities']} only among the {unlabelled} photos), "
          f"{n['images']} images ({n[labelled]} {labelled}, {n[unlabelled]} {unlabelled}), "
          f"{n['skipped']} skipped" + (" (named in the warning)" if n["skipped"] else ""))
    print(f"wrote competition to {out} (answer key: {out / 'solution.csv'})")
    return 0


def _competition(args, conf: dict | None = None) -> tuple[dict, "pd.DataFrame"]:
    """The run's merged config (``conf``, else loaded) and its validated competition folder."""
    from .data import read_competition

    conf = conf if conf is not None else _conf(args)
    return conf, read_competition(args.data, check_images=conf["data"]["check_images"])


def cmd_embed(args) -> int:
    from .pipeline import embed_frame

    conf, meta = _competition(args)
    t = time.perf_counter()
    embs = embed_frame(meta, conf)  # {descriptor: [N, D]}
    sizes = ", ".join(f"{name} of size {e.shape[1]}" for name, e in embs.items())
    print(f"{len(meta)} embeddings ready ({sizes}) in {time.perf_counter() - t:.1f}s")
    return 0


def _decisions(args, meta):
    """The checked decisions of ``--decisions`` (before anything runs: a bad file stops the run), or None."""
    if not getattr(args, "decisions", None):
        return None
    from .review import load_decisions

    return load_decisions(args.decisions, meta)


def _print_site(site: dict) -> None:
    t = site["thumbnails"]
    print(f"wrote the review site {site['index']} ({len(site['pages'])} page(s); thumbnails: {t['made']} made, "
          f"{t['cached'] + t['kept']} reused): open it in a browser, offline")


def cmd_submit(args) -> int:
    conf = _conf(args)  # settings and outputs first: instant, before the heavy imports
    if args.provenance:
        _require_writable(args.provenance, "--provenance", folder=True)
    else:
        _require_writable(args.out, "--out")
    from .submit import expected_order, read_sample, require_rows, write_submission

    conf, meta = _competition(args, conf)
    # a broken sample_submission.csv, or no query at all, stops here, not at the end
    require_rows(meta, expected_order(meta, read_sample(meta.attrs["root"])), args.data)
    from . import pipeline

    task = pipeline.task_of(meta, args.task)
    decisions = _decisions(args, meta)
    plan = pipeline.plan_matching(meta, conf)  # once: the submission and its local score share it
    links = decisions.links if decisions is not None and task == CLUSTERING else None
    pred, details = pipeline.submit(meta, conf, task, plan, links=links)
    if args.review:  # the pipeline's own decisions (2026: the links already honoured)
        from .review import submission_site

        _print_site(submission_site(args.review, meta, conf, task, plan, pred, details))
    record = None
    if decisions is not None:
        record = decisions.summary()
        if task != CLUSTERING:
            from .review import apply_identification

            pred, record["changed"] = apply_identification(pred, decisions)
            print(f"decisions applied: {record['decisions']} identities ({record['changed']} changed the prediction)")
        else:
            print(f"links applied: {record['links']['must']} must-links and {record['links']['cannot']} cannot-links, "
                  "honoured by the clustering")
    if args.provenance:  # <timestamp>-<config>-<local score>.csv + sidecar JSON (kit/kaggle)
        from .kaggle import local_validation, record_submission

        local = local_validation(meta, conf, task, plan)  # once, even when the record must go elsewhere (deliver)
        args.out, out, sidecar = deliver(
            lambda d: record_submission(meta, conf, args.config, d, pred, details, task, plan, decisions=record,
                                        local=local), args.provenance, "--provenance", conf)
        local = sidecar["local_score"]
        print(f"local score {local['value']} (kit validate, {local['pipeline']}); "
              f"provenance in {Path(args.out).with_suffix('.json')}")
    else:
        out = deliver(lambda p: write_submission(pred, meta, p), args.out, "--out", conf)
    if task == CLUSTERING:
        for name, det in sorted(details.items()):
            note = f"  [{det['note']}]" if det.get("note") else ""
            print(f"{name}: {det['method']} cut={det['cut']:.4f}  held-out ARI estimate={det['heldout_ARI']:.4f}  "
                  f"{det['n_clusters']} clusters / {det['n_images']} images{note}")
        print(f"wrote {len(out)} cluster assignments to {args.out}")
        return 0
    q = meta[meta["split"] == "query"].set_index("image_id")["dataset"]
    new = out.assign(dataset=q.loc[out["image_id"]].to_numpy()).groupby("dataset")["identity"].agg(
        lambda s: int((s == NEW_INDIVIDUAL).sum()))
    for name, det in sorted(details.items()):
        est, tau = det.get("heldout_score"), det.get("tau")
        score_name = det.get("candidate", "top1")  # tau is in this open-set score's units
        print(f"{name}: open-set score {score_name}, tau={'n/a' if tau is None else f'{tau:.4f}'}  "
              f"held-out score estimate="
              f"{'n/a' if est is None or est != est else f'{est:.4f}'}  {NEW_INDIVIDUAL} {new.get(name, 0)}"
              f"/{int((q == name).sum())}" + (f"  head {det['head']}" if det.get("head") else ""))
    print(f"wrote {len(out)} predictions to {args.out}")
    return 0


def _print_cluster_table(result: dict) -> None:
    print(f"{'dataset':<20} {'ARI':>6} {'pred/true clusters':>18} {'images':>6} {'method':>10} {'fallback':>8}")
    for ds, r in result.items():
        if ds != "mean":
            fb = r.get("ARI_fallback")
            print(f"{ds:<20} {r['ARI']:6.3f} {str(r['n_clusters']) + '/' + str(r['n_identities']):>18} "
                  f"{r['n_images']:>6} {r['method'] or 'n/a':>10} {'n/a' if fb is None else f'{fb:.3f}':>8}")
    print(f"mean ARI {result['mean']['ARI']:.4f}")


def _print_identification_table(result: dict) -> None:
    names = ["R-1", "R-5", "R-20", "mAP", "shortlist_recall", "BAKS", "BAUS", "score"]
    shown = [n.replace("shortlist_recall", "recall") for n in names]  # recall: true identity among the candidates
    print(f"{'dataset':<20} {'pipeline':<13} " + " ".join(f"{n:>6}" for n in shown))
    for ds, pipes in result.items():
        for pipe, m in pipes.items():
            print(f"{ds:<20} {pipe:<13} " + " ".join(f"{m.get(n, float('nan')):6.3f}" for n in names))


def cmd_validate(args) -> int:
    conf = _conf(args)
    if args.report:
        _require_writable(args.report, "--report", folder=True)
    conf, meta = _competition(args, conf)
    from . import pipeline, report

    task = pipeline.task_of(meta, args.task)
    t0 = time.perf_counter()
    result, info = pipeline.validate(meta, conf, task)
    if args.review:
        from .review import validation_site

        _print_site(validation_site(args.review, meta, conf, task, info))
    if task == CLUSTERING:
        _print_cluster_table(result)
        if args.report:
            written = deliver(lambda d: report.write_cluster_report(d, result), args.report, "--report", conf)
            print(f"wrote {' and '.join(str(p) for p in written.values())}")
        return 0
    _print_identification_table(result)
    if args.report:
        vc = conf["validate"]
        header = {"data": args.data, "descriptors": ", ".join(info["descriptors"]),
                  "local matching": info["plan"].why,
                  "validation split": f"validate.n_unknown={vc['n_unknown']}, query_fraction={vc['query_fraction']}, "
                                      f"seed={vc['seed']}",
                  "run time": f"{time.perf_counter() - t0:.1f} s (validation, before the report)"}
        written = deliver(lambda d: report.write_report(d, result, info, header), args.report, "--report", conf)
        print(f"wrote {Path(args.report) / 'report.md'} ({len(written)} files: metrics.json, openset.json, plots)")
    return 0


def cmd_review(args) -> int:
    from . import pipeline
    from .review import submission_site
    from .submit import expected_order, read_sample, require_rows

    conf, meta = _competition(args)
    require_rows(meta, expected_order(meta, read_sample(meta.attrs["root"])), args.data)
    task = pipeline.task_of(meta, args.task)
    plan = pipeline.plan_matching(meta, conf)
    pred, details = pipeline.submit(meta, conf, task, plan)
    out = args.out or str(Path("reviews") / Path(args.data).resolve().name)
    _print_site(submission_site(out, meta, conf, task, plan, pred, details))
    print(f"then: kit submit {args.data} --decisions decisions.json (the file the pages export)")
    return 0


def cmd_score(args) -> int:
    from .metrics import format_table, score_files

    task, score, table = score_files(args.solution, args.submission)
    print(format_table(task, table, score))
    return 0


def cmd_train(args) -> int:
    from .data import training_source

    conf = _conf(args)
    _require_writable(args.out, "--out", folder=True)
    training_source(args.data, args.folders)  # a folder of the wrong kind stops here, before torch loads
    from .train import train

    t = time.perf_counter()
    summary = train(args.data, conf, args.out, folders=args.folders)
    if summary["rank"] == 0:  # under torchrun every process returns here; one reports
        best = summary["best"] or {}
        shown = "  ".join(f"{k} {v:.3f}" for k, v in best.items() if v == v)
        print(f"best epoch {summary['best_epoch']}: {shown or 'no validation'}; kept in {args.out} "
              f"({time.perf_counter() - t:.0f}s). Embed with it: --set embed.weights={args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kit", description="Animal re-identification competition kit")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("synth", help="write a synthetic competition (tests, offline demo)")
    p.add_argument("out")
    p.add_argument("--layout", choices=["2025", "2026"], default="2025")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--identities", type=int, default=55, help="identities per dataset (55: about 1,000 images)")
    p.add_argument("--size", type=int, default=160, help="image side in px")
    p.set_defaults(fn=cmd_synth)

    p = sub.add_parser("import-folders", help="turn SRC/<identity>/<image> into a competition folder")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--dataset", required=True)
    p.add_argument("--unknown-fraction", type=float, default=0.25)
    p.add_argument("--query-fraction", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", choices=["2025", "2026"], default="2025")
    p.add_argument("--species", default="")
    p.set_defaults(fn=cmd_import)

    for name, fn, hlp in [("embed", cmd_embed, "fill the embedding cache for a competition"),
                          ("submit", cmd_submit, "write a submission CSV"),
                          ("validate", cmd_validate, "score the pipeline on an open-set split of the database"),
                          ("review", cmd_review, "write a static site to confirm or correct the matches (offline)")]:
        p = sub.add_parser(name, help=hlp)
        p.add_argument("data", help="competition folder (holds metadata.csv)")
        _add_config(p)
        if name == "submit":
            p.add_argument("--out", default="submissions/submission.csv")
            p.add_argument("--provenance", metavar="DIR",
                           help="instead of --out, write DIR/<timestamp>-<config>-<local score>.csv and a sidecar "
                                "JSON (config, kit version, git commit, weight hashes, validation metrics); runs "
                                "validate for the local score")
            p.add_argument("--decisions", action="append", metavar="FILE",
                           help="apply human decisions (decisions.json from kit review; repeatable): 2025 queries get "
                                "the decided identity or new_individual, 2026 links are honoured by the clustering")
        if name == "validate":
            p.add_argument("--report", help="folder for metrics.json (and the report)")
        if name in ("submit", "validate"):
            p.add_argument("--review", metavar="DIR",
                           help="also write the review site of this run to DIR"
                                + (" (with the answers: errors first)" if name == "validate" else ""))
        if name == "review":
            p.add_argument("--out", help="site folder (default reviews/<competition folder name>)")
        if name in ("submit", "validate", "review"):
            p.add_argument("--task", choices=["auto", "identification", "clustering"], default="auto",
                           help="identification (2025 layout) or clustering (2026); auto: from the folder's layout")
        p.set_defaults(fn=fn)

    p = sub.add_parser("train", help="fine-tune the backbone with ArcFace (multi-GPU: torchrun ... -m kit train)")
    p.add_argument("data", help="competition folder (its labelled rows; see --folders)")
    _add_config(p)
    p.add_argument("--out", required=True, help="checkpoint folder (resumes when it holds an interrupted run)")
    p.add_argument("--folders", action="store_true",
                   help="DATA is a folder with one sub-folder per identity, not a competition folder (or turn it into "
                        "one with `kit import-folders`)")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("score", help="score a submission against a solution.csv")
    p.add_argument("solution")
    p.add_argument("submission")
    p.set_defaults(fn=cmd_score)

    from .kaggle import add_subcommands as add_kaggle

    add_kaggle(sub)  # kit kaggle download|upload|dataset

    p = sub.add_parser("config", help="print the merged config")
    _add_config(p)
    p.set_defaults(fn=cmd_config)
    return ap


def _kept(args) -> str:
    """What an interrupted command leaves behind and how to go on: the line Ctrl-C prints."""
    if args.cmd == "train":
        from .train.model import STATE_FILE

        last = Path(args.out) / "last"
        if (last / STATE_FILE).is_file():
            return f"kept the last finished epoch's checkpoint in {last}; rerun the same command to resume from it"
        return f"no epoch had finished, so {args.out} holds nothing to resume; rerun the same command to start again"
    if args.cmd in ("embed", "submit", "validate"):
        from .cache import cache_root

        try:
            root = cache_root(_conf(args)["cache"])
        except KitError:
            root = None
        outputs = "" if args.cmd == "embed" else "; no output file was written (outputs come only at the end)"
        if root is None:
            return f"the cache is off, so nothing was kept{outputs}; rerun the same command to start again"
        return (f"kept every finished cache shard in {root}{outputs}; rerun the same command to resume (what is "
                "cached is not computed again)")
    if args.cmd == "import-folders":
        return f"{args.out} may hold part of the images; delete it, then rerun the same command"
    return "no file was left half-written; rerun the same command"


class Terminated(KeyboardInterrupt):
    """SIGTERM (Kaggle's time limit, ``timeout``, the end of a Slurm job) raised as Ctrl-C's KeyboardInterrupt is:
    the same cleanup runs (atomic writes drop their temporary files, finished shards and epochs stay) and main
    prints the same line of what was kept."""


def _terminate(main_pid: int, signum, frame) -> None:
    if os.getpid() != main_pid:  # a forked worker (a DataLoader's) inherits the handler: it dies as by default
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    signal.signal(signum, signal.SIG_IGN)  # a second SIGTERM must not cut the first one's cleanup and message short
    raise Terminated


def _show_warning(python_show, message, category, filename, lineno, file=None, line=None):
    """Kit warnings as one line ("warning: ..."); the others as Python (``python_show``) prints them."""
    if issubclass(category, KitWarning):
        print(f"warning: {message}", file=file or sys.stderr)
    else:
        python_show(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    python_show = warnings.showwarning
    warnings.showwarning = functools.partial(_show_warning, python_show)
    on_main = threading.current_thread() is threading.main_thread()  # only there may a signal handler be set
    previous = signal.signal(signal.SIGTERM, functools.partial(_terminate, os.getpid())) if on_main else None
    try:
        return args.fn(args)
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: one line, what was kept, how to go on
        term = isinstance(exc, Terminated)
        print(f"{'terminated (SIGTERM)' if term else 'interrupted'}: {_kept(args)}", file=sys.stderr)
        return 128 + int(signal.SIGTERM if term else signal.SIGINT)  # 143 or 130, as a shell reports the signal
    finally:
        warnings.showwarning = python_show
        if on_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
