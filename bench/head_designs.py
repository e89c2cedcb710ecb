"""Other metric-head designs beside the kit's linear ArcFace head (kit/head.py), measured alone (issue 18).

Each design is trained on a validation split's database and judged on its known validation queries (identities it
saw, photos it never saw): R-1 by max cosine per identity, global evidence only, exactly as ``bench/head.py``. The
designs the issue asked to try where the head falls short:

- ``arc``: the kit's head, ``kit.head.fit_head`` with the head section (a bias-free linear map on the inputs' top
  256 principal directions, ArcFace s=30 m=0.3, 300 full-batch AdamW steps, lr 1e-3, input noise 0.02);
- ``supcon`` / ``supcon-arc``: the same head with ``head.loss=supcon`` / ``both`` (SupCon at ``head.temperature``);
- ``mlp``: a small MLP head (linear + ReLU hidden layer of 512, residual linear path) with ArcFace, by the same
  recipe (trained here: kit/head.py trains linear maps only);
- ``per-descriptor``: one kit head per descriptor, their unit outputs side by side (as ``combine`` does);
- ``lda``: shrinkage LDA (scikit-learn) on the same 256 principal directions, closed form;
- ``ensemble``: the mean cosine of four heads (ArcFace and SupCon, two seeds each);
- TTA flip for the head's input: run with ``--set embed.tta_flip=true`` (each descriptor the mean of the photo and its
  mirror image; the embeddings are computed once and cached).

    python bench/head_designs.py /tmp/nyala25 --seeds 0 1 2 3 [--designs arc supcon ...] [--set embed.tta_flip=true]
        [--set head.temperature=0.1 ...]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kit import metrics, retrieve  # noqa: E402
from kit.config import load_config  # noqa: E402
from kit.data import read_competition  # noqa: E402
from kit.head import fit_head  # noqa: E402
from kit.pipeline import combine, validation_split  # noqa: E402

DESIGNS = ("arc", "supcon", "supcon-arc", "mlp", "per-descriptor", "lda", "ensemble")


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _basis(x: np.ndarray, r: int = 256) -> np.ndarray:
    """[D, r] the top principal directions (uncentred, as kit/head.py): a few hundred photos span no more."""
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return vt[:r].T.astype(np.float32)


def mlp(x: np.ndarray, y: np.ndarray, hidden: int = 512, dim: int = 256, steps: int = 300, lr: float = 1e-3,
        noise: float = 0.02, seed: int = 0):
    """A small MLP head (linear path + ReLU hidden layer) with ArcFace (s=30, m=0.3), by the kit head's recipe
    otherwise; returns ``project([M, D]) -> [M, dim]`` unit rows. The only design kit/head.py cannot train."""
    import torch
    import torch.nn.functional as F

    basis = _basis(x)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(np.asarray(x, np.float32) @ basis), torch.from_numpy(y.astype(np.int64))
    d_in = xt.shape[1]
    lin = torch.nn.Parameter(torch.randn(d_in, dim, generator=gen) / np.sqrt(d_in))
    w1 = torch.nn.Parameter(torch.randn(d_in, hidden, generator=gen) / np.sqrt(d_in))
    w2 = torch.nn.Parameter(torch.randn(hidden, dim, generator=gen) / np.sqrt(hidden))
    centres = torch.nn.Parameter(torch.randn(int(y.max()) + 1, dim, generator=gen))
    net = lambda a: a @ lin + torch.relu(a @ w1) @ w2  # noqa: E731
    opt = torch.optim.AdamW([lin, w1, w2, centres], lr=lr, weight_decay=1e-3)
    rows = torch.arange(len(yt))
    with torch.enable_grad():
        for _ in range(steps):
            z = F.normalize(net(xt + noise * torch.randn(xt.shape, generator=gen)), dim=1)
            cos = z @ F.normalize(centres, dim=1).T
            target = cos[rows, yt].clamp(-1 + 1e-6, 1 - 1e-6)
            arc = cos.scatter(1, yt[:, None], torch.cos(torch.acos(target) + 0.3)[:, None])
            loss = F.cross_entropy(30.0 * arc, yt)
            opt.zero_grad()
            loss.backward()
            opt.step()

    def project(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return _unit(net(torch.from_numpy(np.asarray(a, np.float32) @ basis)).numpy())

    return project


def kit_head(x: np.ndarray, labels: np.ndarray, hc: dict, **change):
    """kit/head.py's head (the head section ``hc`` with ``change``), as a projection."""
    return fit_head(x, labels, {**hc, **change}).project


def lda(x: np.ndarray, y: np.ndarray):
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    basis = _basis(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # identities of one photo: sklearn warns, the pooled covariance copes
        model = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(x @ basis, y)
    return lambda a: _unit(model.transform(np.asarray(a, np.float32) @ basis))


def design_sims(design: str, embs_db: dict, embs_q: dict, labels: np.ndarray, hc: dict) -> np.ndarray:
    """``[Q, N] float32`` query-database cosines in the design's space (``hc``: the head section)."""
    xd, xq = combine(embs_db), combine(embs_q)
    if design == "per-descriptor":
        heads = {d: kit_head(embs_db[d], labels, hc) for d in embs_db}
        scale = np.float32(1 / np.sqrt(len(heads)))
        zd = np.concatenate([heads[d](embs_db[d]) for d in heads], 1) * scale
        zq = np.concatenate([heads[d](embs_q[d]) for d in heads], 1) * scale
        return zq @ zd.T
    if design == "ensemble":
        heads = [kit_head(xd, labels, hc, loss=loss, seed=s) for s in (0, 1) for loss in ("arcface", "supcon")]
        return sum(h(xq) @ h(xd).T for h in heads) / len(heads)
    if design in ("mlp", "lda"):
        y = np.unique(labels.astype(str), return_inverse=True)[1]
        head = mlp(xd, y) if design == "mlp" else lda(xd, y)
    else:
        head = kit_head(xd, labels, hc, loss={"arc": "arcface", "supcon-arc": "both"}.get(design, design))
    return head(xq) @ head(xd).T


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("competition", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=DESIGNS)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args(argv)
    meta = read_competition(args.competition, check_images=False)
    out: dict[str, list[float]] = {d: [] for d in ("frozen", *args.designs)}
    for seed in args.seeds:
        conf = load_config(None, [f"validate.seed={seed}", *args.overrides])
        db, q, solution, embs = validation_split(meta, conf)
        embs_db = {d: e[db["_row"]] for d, e in embs.items()}
        embs_q = {d: e[q["_row"]] for d, e in embs.items()}
        labels = db["identity"].to_numpy(dtype=object)
        known = ~solution["new_identity"].to_numpy(bool)
        truth = solution["identity"].to_numpy(dtype=object)

        def r1(sims: np.ndarray) -> float:
            ranked = retrieve.ranked_labels(sims[known], labels, 1)
            return float(metrics.rank_k(ranked, truth[known], ks=(1,))["R-1"])

        out["frozen"].append(r1(combine(embs_q) @ combine(embs_db).T))
        for design in args.designs:
            t = time.perf_counter()
            out[design].append(r1(design_sims(design, embs_db, embs_q, labels, conf["head"])))
            print(f"seed {seed} {design}: R-1 {out[design][-1]:.3f} ({time.perf_counter() - t:.1f} s)", flush=True)
    print("| design | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |")
    print("|---|" + "---|" * (len(args.seeds) + 1))
    for design, values in out.items():
        print(f"| {design} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {np.mean(values):.3f} |")
    return out


if __name__ == "__main__":
    main()
