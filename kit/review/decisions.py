"""Human decisions: read ``decisions.json``, check it against a competition, and apply it to the predictions.

The file (``kit review``'s pages export it; any tool or person may write it)::

    {"decisions": [{"image_id": "...", "identity": "<a database identity or new_individual>"}],   # 2025
     "links": [{"a": "<image_id>", "b": "<image_id>", "same": true}],                           # 2026
     "kit": {"layout": "2025", "competition": "...", ...}}                                      # optional

Either list may be missing. ``load_decisions`` reads one or more such files and checks them all before anything
runs; every problem (an unknown image_id, a database or train photo, an identity another dataset's or unknown,
one photo decided two ways, links that contradict each other, a file of the other task, from another
competition or from a validation review) is listed in one DecisionsError, so a run with ``--decisions`` either
applies all of it or writes nothing. 2025: ``apply_identification`` gives each decided query its identity or
``new_individual``. 2026: the links become must-/cannot-link pairs (``Decisions.links``) that the clustering
honours (kit/cluster/constraints.py).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..cache import file_hash
from ..data import labelled_mask
from ..errors import DecisionsError
from ..schema import LAYOUT_SPLITS, NEW_INDIVIDUAL

TOP_KEYS = ("decisions", "links", "kit")  # what a decisions file may hold (anything else is a typo, said so)
MAX_LISTED = 20  # problems listed in one error; the rest are counted


@dataclass
class Decisions:
    """The checked decisions of one or more files, for one competition."""

    identities: dict[str, str] = field(default_factory=dict)  # query image_id -> identity or new_individual (2025)
    links: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["a", "b", "same"]))  # 2026, unique
    files: list[dict] = field(default_factory=list)  # {"file", "sha1", "decisions", "links"} per file read

    def summary(self) -> dict:
        """What a submission's sidecar records: the files with their sha1 and how much they hold."""
        same = self.links["same"].to_numpy(bool) if len(self.links) else np.zeros(0, bool)
        return {"files": self.files, "decisions": len(self.identities),
                "links": {"must": int(same.sum()), "cannot": int((~same).sum())}}


def _problems(title: str, problems: list[str]) -> DecisionsError:
    shown = problems[:MAX_LISTED]
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    return DecisionsError(f"{title}: {len(problems)} problem(s), nothing was written\n  " + "\n  ".join(shown) + more)


def read_file(path: str | Path) -> tuple[list[dict], list[dict], dict, list[str]]:
    """(decisions, links, kit info, problems) of one file, its shape checked (not yet against a competition)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [], [], {}, [f"{path}: no such file; export it from the review page (kit review), or fix the path"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [], [], {}, [f"{path}: not a JSON file ({exc})"]
    if not isinstance(raw, dict):
        return [], [], {}, [f"{path}: the top level must be an object with \"decisions\" and/or \"links\""]
    problems = [f"{path}: unknown key {k!r}; a decisions file holds {', '.join(TOP_KEYS)}"
                for k in raw if k not in TOP_KEYS]
    lists = {}
    for key, fields in (("decisions", {"image_id": str, "identity": str}), ("links", {"a": str, "b": str,
                                                                                    "same": bool})):
        items = raw.get(key, [])
        if not isinstance(items, list):
            problems.append(f"{path}: \"{key}\" must be a list")
            items = []
        good = []
        for n, item in enumerate(items):
            bad = [f for f, kind in fields.items()
                   if not isinstance(item, dict) or not isinstance(item.get(f), kind) or item.get(f) == ""]
            if bad:
                want = ", ".join(f"\"{f}\": {'true/false' if kind is bool else 'a text'}" for f, kind in fields.items())
                problems.append(f"{path}: {key}[{n}] = {json.dumps(item)[:80]}: needs {want}")
            else:
                good.append(item)
        lists[key] = good
    info = raw.get("kit", {})
    return lists["decisions"], lists["links"], info if isinstance(info, dict) else {}, problems


def _must_path(a: str, b: str, adjacency: dict[str, set]) -> list[str]:
    """A chain of must-links from ``a`` to ``b`` (breadth first), to show why a cannot-link contradicts them."""
    seen, todo = {a: None}, deque([a])
    while todo:
        x = todo.popleft()
        if x == b:
            break
        for y in adjacency.get(x, ()):
            if y not in seen:
                seen[y] = x
                todo.append(y)
    chain, x = [], b
    while x is not None:
        chain.append(x)
        x = seen.get(x)
    return chain[::-1]


def check_links(links: pd.DataFrame, where: dict[str, str]) -> list[str]:
    """Problems of a set of links (columns a, b, same, file): a pair both same and not, a must-link between two
    datasets (``where``: image_id -> dataset), a cannot-link of a photo with itself or inside a must-link group."""
    problems = []
    key = [tuple(sorted(p)) for p in zip(links["a"], links["b"])]
    both = links.assign(pair=key).groupby("pair")["same"].nunique()
    problems += [f"links say {a!r} and {b!r} are the same individual and also that they are not; keep one"
                 for a, b in both.index[both > 1]]
    must = links[links["same"]]
    problems += [f"link {a!r} - {b!r} (same: true): they lie in datasets {where[a]!r} and {where[b]!r}, and "
                 "one individual lies in one dataset" for a, b in zip(must["a"], must["b"]) if where[a] != where[b]]
    adjacency: dict[str, set] = {}
    for a, b in zip(must["a"], must["b"]):
        adjacency.setdefault(a, set()).add(b)
        adjacency.setdefault(b, set()).add(a)
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for a, b in zip(must["a"], must["b"]):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[ra] = rb
    for a, b in zip(*(links.loc[~links["same"], c] for c in ("a", "b"))):
        if a == b:
            problems.append(f"link {a!r} - {b!r} (same: false): a photo cannot be apart from itself")
        elif root(a) == root(b) and (a, b) not in both.index[both > 1] and (b, a) not in both.index[both > 1]:
            chain = " = ".join(repr(x) for x in _must_path(a, b, adjacency))
            problems.append(f"link {a!r} - {b!r} (same: false) contradicts the must-links {chain}; drop one of them")
    return problems


def load_decisions(paths, meta: pd.DataFrame) -> Decisions:
    """Read and check decision files against the competition ``meta`` (data.read_competition).

    ``paths``: one path or several (their contents are merged; they must agree). Returns Decisions; raises one
    DecisionsError listing every problem (see the module docstring).
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    layout = meta.attrs.get("layout", "2025")
    root = meta.attrs.get("root", "the competition")
    labelled, unlabelled = LAYOUT_SPLITS[layout]
    lab = labelled_mask(meta)
    split = dict(zip(meta["image_id"], meta["split"]))
    where = dict(zip(meta["image_id"], meta["dataset"]))
    known = {d: set(g) for d, g in meta.loc[lab].groupby("dataset")["identity"]}
    problems: list[str] = []
    decided: dict[str, tuple[str, str]] = {}  # image_id -> (identity, file)
    rows: list[dict] = []
    out = Decisions()
    for path in paths:
        decisions, links, info, bad = read_file(path)
        problems += bad
        if path and Path(path).is_file():
            out.files.append({"file": str(Path(path).resolve()), "sha1": file_hash(path),
                              "decisions": len(decisions), "links": len(links)})
        if info.get("answers"):
            problems.append(f"{path}: exported from a validation review (kit validate --review), whose queries are "
                            "labelled photos of the split; export the decisions from `kit review` instead")
            continue
        if info.get("layout") not in (None, layout):
            problems.append(f"{path}: written for a {info['layout']} competition ({info.get('competition', '?')}); "
                            f"{root} is a {layout} competition ({labelled}/{unlabelled})")
            continue
        ids = [d["image_id"] for d in decisions] + [x for link in links for x in (link["a"], link["b"])]
        if ids and not any(i in split for i in ids):
            problems.append(f"{path}: none of its {len(set(ids))} image_ids is in {root}: is it from another "
                            "competition?")
            continue
        if decisions and layout != "2025":
            problems.append(f"{path}: {len(decisions)} decisions name identities, which the 2025 task takes; {root} "
                            "is a 2026 competition (train/test): decide with links (same: true / false) instead")
        if links and layout == "2025":
            problems.append(f"{path}: {len(links)} links are for the 2026 clustering; {root} is a 2025 competition "
                            "(database/query): decide with {\"image_id\", \"identity\"} instead")
        for d in decisions if layout == "2025" else []:
            i, ident = d["image_id"], d["identity"]
            if i not in split:
                problems.append(f"{path}: image_id {i!r} is not in {root}")
            elif split[i] != unlabelled:
                problems.append(f"{path}: {i!r} is a {split[i]} photo (its identity is known); decide {unlabelled} "
                                "photos only")
            elif ident != NEW_INDIVIDUAL and ident not in known.get(where[i], ()):
                problems.append(f"{path}: {i!r} -> identity {ident!r}, which is not in dataset {where[i]!r}'s "
                                f"{labelled}; pick one of its identities or {NEW_INDIVIDUAL}")
            elif i in decided and decided[i][0] != ident:
                problems.append(f"{i!r} is decided twice: {decided[i][0]!r} in {decided[i][1]} and {ident!r} in "
                                f"{path}; keep one")
            else:
                decided[i] = (ident, str(path))
        for link in links if layout != "2025" else []:
            for end in (link["a"], link["b"]):
                if end not in split:
                    problems.append(f"{path}: link {link['a']!r} - {link['b']!r}: image_id {end!r} is not in {root}")
                elif split[end] != unlabelled:
                    problems.append(f"{path}: link {link['a']!r} - {link['b']!r}: {end!r} is a {split[end]} photo; "
                                    f"links join {unlabelled} photos")
            rows.append({**{k: link[k] for k in ("a", "b", "same")}, "file": str(path)})
    if not problems and rows:
        links = pd.DataFrame(rows)
        problems += check_links(links, where)
        key = links[["a", "b"]].apply(lambda r: tuple(sorted(r)), axis=1)
        out.links = links.assign(_k=key).drop_duplicates("_k")[["a", "b", "same"]].reset_index(drop=True)
    if problems:
        raise _problems(f"decisions {', '.join(str(p) for p in paths)} do not fit {root}", problems)
    out.identities = {i: v for i, (v, _) in decided.items()}
    return out


def apply_identification(pred: pd.DataFrame, decisions: Decisions) -> tuple[pd.DataFrame, int]:
    """2025: ``pred`` (image_id, identity) with each decided query's identity; (new predictions, how many rows
    changed). Rows without a decision keep the pipeline's prediction."""
    out = pred.copy()
    decided = out["image_id"].map(decisions.identities)
    has = decided.notna().to_numpy()
    changed = int((has & (decided.to_numpy(dtype=object) != out["identity"].to_numpy(dtype=object))).sum())
    out.loc[has, "identity"] = decided[has].to_numpy(dtype=object)
    return out, changed
