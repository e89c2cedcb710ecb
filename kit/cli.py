"""The ``kit`` command line. Each subcommand is a thin shell over one stage's public functions."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import KitError


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (see configs/); defaults to configs/default.yaml's settings")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set embed.batch_size=64 (repeatable)")


def _conf(args) -> dict:
    from .config import load_config

    return load_config(args.config, args.set)


def cmd_config(args) -> int:
    from .config import dump_config

    print(dump_config(_conf(args)), end="")
    return 0


def cmd_synth(args) -> int:
    from .synth import make_competition

    t = time.perf_counter()
    out = make_competition(args.out, layout=args.layout, seed=args.seed, identities=args.identities,
                           image_size=args.size)
    print(f"wrote synthetic {args.layout} competition to {out} in {time.perf_counter() - t:.1f}s")
    return 0


def cmd_import(args) -> int:
    from .data import import_folders

    out = import_folders(args.src, args.out, args.dataset, args.unknown_fraction, args.query_fraction,
                         args.seed, args.layout, args.species)
    print(f"wrote competition to {out} (answer key: {out / 'solution.csv'})")
    return 0


def cmd_embed(args) -> int:
    from .data import read_competition
    from .pipeline import embed_frame

    conf = _conf(args)
    meta = read_competition(args.data, check_images=conf["data"]["check_images"])
    t = time.perf_counter()
    emb = embed_frame(meta, conf)
    print(f"{len(meta)} embeddings of size {emb.shape[1]} ready in {time.perf_counter() - t:.1f}s")
    return 0


def cmd_submit(args) -> int:
    from .data import read_competition
    from .pipeline import run_submission
    from .submit import write_submission

    conf = _conf(args)
    meta = read_competition(args.data, check_images=conf["data"]["check_images"])
    if meta.attrs["layout"] != "2025":
        from .errors import DataError

        raise DataError(f"{args.data} is an AnimalCLEF 2026 (train/test) competition; run "
                        "`kit submit --task clustering` for it")
    pred, details = run_submission(meta, conf)
    out = write_submission(pred, meta, args.out)
    q = meta[meta["split"] == "query"].set_index("image_id")["dataset"]
    new = out.assign(dataset=q.loc[out["image_id"]].to_numpy()).groupby("dataset")["identity"].agg(
        lambda s: int((s == "new_individual").sum()))
    for name, det in sorted(details.items()):
        est, tau = det.get("heldout_score"), det.get("tau")
        print(f"{name}: tau={'n/a' if tau is None else f'{tau:.4f}'}  held-out score estimate="
              f"{'n/a' if est is None or est != est else f'{est:.4f}'}  new_individual {new.get(name, 0)}"
              f"/{int((q == name).sum())}")
    print(f"wrote {len(out)} predictions to {args.out}")
    return 0


def cmd_validate(args) -> int:
    from .data import read_competition
    from .pipeline import run_validation

    conf = _conf(args)
    meta = read_competition(args.data, check_images=conf["data"]["check_images"])
    result, _ = run_validation(meta, conf)
    names = ["R-1", "R-5", "R-20", "mAP", "BAKS", "BAUS", "score"]
    print(f"{'dataset':<20} {'pipeline':<9} " + " ".join(f"{n:>6}" for n in names))
    for ds, pipes in result.items():
        for pipe, m in pipes.items():
            print(f"{ds:<20} {pipe:<9} " + " ".join(f"{m.get(n, float('nan')):6.3f}" for n in names))
    if args.report:
        from .submit import write_text_atomic

        rep = Path(args.report)
        write_text_atomic(json.dumps(result, indent=2), rep / "metrics.json")
        print(f"wrote {rep / 'metrics.json'}")
    return 0


def cmd_score(args) -> int:
    from .metrics import format_table, score_files

    task, score, table = score_files(args.solution, args.submission)
    print(format_table(task, table, score))
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
                          ("validate", cmd_validate, "score the pipeline on an open-set split of the database")]:
        p = sub.add_parser(name, help=hlp)
        p.add_argument("data", help="competition folder (holds metadata.csv)")
        _add_config(p)
        if name == "submit":
            p.add_argument("--out", default="submissions/submission.csv")
        if name == "validate":
            p.add_argument("--report", help="folder for metrics.json (and the report)")
        p.set_defaults(fn=fn)

    p = sub.add_parser("score", help="score a submission against a solution.csv")
    p.add_argument("solution")
    p.add_argument("submission")
    p.set_defaults(fn=cmd_score)

    p = sub.add_parser("config", help="print the merged config")
    _add_config(p)
    p.set_defaults(fn=cmd_config)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
