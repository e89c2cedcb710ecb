"""The real ``kaggle`` CLI for data and uploads, and the ``kit kaggle ...`` subcommands that kit.cli registers.

``download_competition`` (``make download``) and ``upload_submission`` (``make upload``) run the real ``kaggle``
command and turn its failures into one KaggleError that says the fix; missing credentials name where
``kaggle.json`` goes (``credentials_help``), never a stack trace. ``add_subcommands`` adds ``kit kaggle
download|upload|dataset``, thin shells over this module, kit.kaggle.provenance and kit.kaggle.offline.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Sequence

from .base import COMPETITION, KaggleError, kaggle_config_dir
from .offline import KAGGLE_LACKS, build_offline_dataset, upload_instructions
from .provenance import sidecar_path, upload_message


def credentials_help(env: dict | None = None) -> str:
    """How to give the kaggle CLI credentials, naming the exact paths it reads."""
    folder = kaggle_config_dir(env)
    return (
        "Kaggle credentials are missing, so the kaggle CLI refused (\"Authentication required\"). Give it one of:\n"
        f"  1. kaggle.json: kaggle.com > Settings > API > Create New Token downloads it; save it as "
        f"{folder / 'kaggle.json'} and run `chmod 600 {folder / 'kaggle.json'}` (KAGGLE_CONFIG_DIR moves the "
        "folder)\n"
        "  2. environment variables: export KAGGLE_USERNAME=<your user name> KAGGLE_KEY=<the key in kaggle.json>\n"
        f"  3. kaggle >= 1.7 API token: export KAGGLE_API_TOKEN=<token>, or save it as {folder / 'access_token'}\n"
        "Then run the command again."
    )


def kaggle_executable() -> str:
    """The ``kaggle`` CLI beside this Python (the .venv's), else on PATH."""
    here = Path(sys.executable).parent / "kaggle"
    if here.is_file():
        return str(here)
    found = shutil.which("kaggle")
    if found is None:
        raise KaggleError("the kaggle CLI is not installed; run `pip install kaggle six` (or `make install`)")
    return found


def _explain_failure(output: str, args: Sequence[str], code: int, competition: str) -> str:
    text = output.lower()
    if any(s in text for s in ("authentication required", "could not find kaggle.json", "401 client error",
                               "unauthorized", "you must authenticate")):
        return credentials_help()
    if "403 client error" in text or "forbidden" in text:
        return (f"Kaggle refused (403 Forbidden): accept the competition rules at "
                f"https://www.kaggle.com/competitions/{competition}/rules with the account of your credentials, "
                "then run the command again.")
    if any(s in text for s in ("max retries", "failed to establish", "name resolution", "connectionerror",
                               "temporary failure", "network is unreachable")):
        return ("cannot reach kaggle.com (no internet here?). Run this on a machine with internet, or on Kaggle "
                "attach the competition data to the notebook instead.")
    last = [ln for ln in output.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
    return f"`kaggle {' '.join(args)}` failed with exit code {code}: {last[0].strip()}"


def run_kaggle(args: Sequence[str], competition: str = COMPETITION) -> str:
    """Run ``kaggle <args>``, echoing its output as it comes (a download shows its progress); return the output.

    A stack trace or the CLI's own login help is not echoed: the failure becomes one KaggleError that says the fix.
    """
    proc = subprocess.Popen([kaggle_executable(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: list[str] = []
    quiet = False  # set once a traceback or the login help starts: the KaggleError below says it for users
    assert proc.stdout is not None
    for raw in iter(proc.stdout.readline, b""):
        line = raw.decode(errors="replace")
        seen.append(line)
        quiet = quiet or line.startswith(("Traceback", "Authentication required"))
        if not quiet:
            sys.stdout.write(line)
            sys.stdout.flush()
    code = proc.wait()
    output = "".join(seen)
    if code != 0:
        raise KaggleError(_explain_failure(output, args, code, competition))
    return output


def unzip_into(archive: Path, out: Path) -> None:
    """Extract ``archive`` into ``out``; a member that would land outside ``out`` is an error (zip slip)."""
    out = out.resolve()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            if not (out / member).resolve().is_relative_to(out):
                raise KaggleError(f"{archive}: member {member!r} would be written outside {out}; not extracting")
        zf.extractall(out)


def download_competition(out: str | Path, competition: str = COMPETITION, keep_zip: bool = False) -> Path:
    """``kaggle competitions download`` into ``out`` and unzip it; returns the folder holding metadata.csv."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_kaggle(["competitions", "download", "-c", competition, "-p", str(out)], competition)
    archive = out / f"{competition}.zip"
    if not archive.is_file():
        raise KaggleError(f"kaggle reported success but {archive} is not there; look in {out}")
    unzip_into(archive, out)
    if not keep_zip:
        archive.unlink()
    found = sorted(out.rglob("metadata.csv"), key=lambda p: len(p.parts))
    if not found:
        raise KaggleError(f"{archive} held no metadata.csv; is {competition} an AnimalCLEF competition?")
    return found[0].parent


def upload_submission(csv: str | Path, competition: str = COMPETITION, message: str | None = None) -> str:
    """``kaggle competitions submit`` with a message made from the CSV's sidecar JSON (``make submit``)."""
    csv = Path(csv)
    if not csv.is_file():
        raise KaggleError(f"{csv}: no such submission file; `make submit DATA=...` writes them to submissions/")
    side = sidecar_path(csv)
    if message is None:
        if not side.is_file():
            raise KaggleError(f"{csv} has no sidecar {side.name}, so there is no provenance for the message; "
                              "write the submission with `make submit` or pass --message")
        message = upload_message(json.loads(side.read_text()))
    run_kaggle(["competitions", "submit", "-c", competition, "-f", str(csv), "-m", message], competition)
    return message


def add_subcommands(sub) -> None:
    """``kit kaggle download|upload|dataset``: registered by kit.cli."""
    p = sub.add_parser("kaggle", help="Kaggle: download the data, upload a submission, build the offline dataset")
    ks = p.add_subparsers(dest="kaggle_cmd", required=True)
    d = ks.add_parser("download", help="kaggle competitions download + unzip (needs Kaggle credentials)")
    d.add_argument("--out", default=f"data/{COMPETITION}", help="folder to download and unzip into")
    d.add_argument("--competition", default=COMPETITION)
    d.add_argument("--keep-zip", action="store_true", help="keep the zip after unzipping")
    d.set_defaults(fn=_cmd_download)
    u = ks.add_parser("upload", help="kaggle competitions submit, with a message from the CSV's sidecar JSON")
    u.add_argument("file", help="a submission CSV written by `make submit` (its .json sidecar beside it)")
    u.add_argument("--competition", default=COMPETITION)
    u.add_argument("--message", help="submission message; default: made from the sidecar")
    u.set_defaults(fn=_cmd_upload)
    b = ks.add_parser("dataset", help="build the folder for offline Kaggle notebooks (wheels + weights)")
    b.add_argument("out", nargs="?", default="dist/kaggle-dataset")
    b.add_argument("--no-download", action="store_true",
                   help="build offline: only the kit wheel and local weights (no pip download)")
    b.add_argument("--package", action="append", default=[], metavar="NAME",
                   help="one more package whose wheel Kaggle lacks (repeatable)")
    b.set_defaults(fn=_cmd_dataset)


def _cmd_download(args) -> int:
    folder = download_competition(args.out, args.competition, args.keep_zip)
    print(f"competition data in {folder}; next: make submit DATA={folder}")
    return 0


def _cmd_upload(args) -> int:
    message = upload_submission(args.file, args.competition, args.message)
    print(f"submitted {args.file} to {args.competition}: {message}")
    return 0


def _cmd_dataset(args) -> int:
    folder = build_offline_dataset(args.out, download=not args.no_download,
                                   packages=[*KAGGLE_LACKS, *args.package])
    print(upload_instructions(folder))
    return 0
