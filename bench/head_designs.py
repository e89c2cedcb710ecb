"""Other metric-head designs beside the kit's linear ArcFace head (kit/head.py), measured alone (issue 18).

Each design is trained on a validation split's database and judged on its known validation queries (identities it
saw, photos it never saw): R-1 by max cosine per identity, global evidence only, exactly as ``bench/head.py``. The
designs the issue asked to try where the head falls short:

- ``arc``: the kit's head (a bias-free linear map on the inputs' top 256 principal directions, ArcFace s=30 m=0.3,
  300 full-batch AdamW steps, lr 1e-3, input noise 0.02), trained here by the same recipe;
- ``supcon`` / ``supcon-arc``: supervised contrastive loss (temperature ``--temperature``), alone or added to ArcFace;
- ``mlp``: a small MLP head (linear + ReLU hidden layer of 512, residual linear path) with ArcFace;
- ``per-descriptor``: one ArcFace head per descriptor, their unit outputs side by side (as ``combine`` does);
- ``lda``: shrinkage LDA (scikit-learn) on the same 256 principal directions, closed form;
- ``ensemble``: the mean cosine of four heads (ArcFace and SupCon, two seeds each);
- TTA flip for the head's input: run with ``--set embed.tta_flip=true`` (each descriptor the mean of the photo and its
  mirror image; the embeddings are computed once and cached).

    python bench/head_designs.py /tmp/nyala25 --seeds 0 1 2 3 [--designs arc supcon ...] [--set embed.tta_flip=true]
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
from kit.pipeline import combine, validation_split  # noqa: E402

DESIGNS = ("arc", "supcon", "supcon-arc", "mlp", "per-descriptor", "lda", "ensemble")


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _basis(x: np.ndarray, r: int = 256) -> np.ndarray:
    """[D, r] the top principal directions (uncentred, as kit/head.py): a few hundred photos span no more."""
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return vt[:r].T.astype(np.float32)


def train(x: np.ndarray, y: np.ndarray, loss: str = "arc", hidden: int = 0, temperature: float = 0.05,
          seed: int = 0, dim: int = 256, steps: int = 300, lr: float = 1e-3, noise: float = 0.02):
    """A head on ``x: [N, D] float32`` with identities ``y: [N] int``; returns ``project([M, D]) -> [M, dim]`` unit
    rows. ``loss``: "arc" (ArcFace), "supcon" or "supcon-arc" (both summed); ``hidden > 0``: an MLP head."""
    import torch
    import torch.nn.functional as F

    basis = _basis(x)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(np.asarray(x, np.float32) @ basis), torch.from_numpy(y.astype(np.int64))
    d_in = xt.shape[1]
    lin = torch.nn.Parameter(torch.randn(d_in, dim, generator=gen) / np.sqrt(d_in))
    params = [lin]
    if hidden:
        w1 = torch.nn.Parameter(torch.randn(d_in, hidden, generator=gen) / np.sqrt(d_in))
        w2 = torch.nn.Parameter(torch.randn(hidden, dim, generator=gen) / np.sqrt(hidden))
        params += [w1, w2]
        net = lambda a: a @ lin + torch.relu(a @ w1) @ w2  # noqa: E731
    else:
        net = lambda a: a @ lin  # noqa: E731
    centres = torch.nn.Parameter(torch.randn(int(y.max()) + 1, dim, generator=gen))
    if loss != "supcon":
        params.append(centres)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-3)
    rows, eye = torch.arange(len(yt)), torch.eye(len(yt))
    positives = (yt[:, None] == yt[None, :]).float() - eye
    with torch.enable_grad():
        for _ in range(steps):
            z = F.normalize(net(xt + noise * torch.randn(xt.shape, generator=gen)), dim=1)
            total = torch.zeros(())
            if loss.startswith("supcon"):
                logits = z @ z.T / temperature - 1e9 * eye
                logp = logits - torch.logsumexp(logits, 1, keepdim=True)
                n_pos = positives.sum(1)
                has = n_pos > 0  # a photo whose identity has no other photo contrasts nothing
                total = total + (-(logp * positives).sum(1)[has] / n_pos[has]).mean()
            if loss != "supcon":
                cos = z @ F.normalize(centres, dim=1).T
                target = cos[rows, yt].clamp(-1 + 1e-6, 1 - 1e-6)
                arc = cos.scatter(1, yt[:, None], torch.cos(torch.acos(target) + 0.3)[:, None])
                total = total + F.cross_entropy(30.0 * arc, yt)
            opt.zero_grad()
            total.backward()
            opt.step()

    def project(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return _unit(net(torch.from_numpy(np.asarray(a, np.float32) @ basis)).numpy())

    return project


def lda(x: np.ndarray, y: np.ndarray):
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    basis = _basis(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # identities of one photo: sklearn warns, the pooled covariance copes
        model = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(x @ basis, y)
    return lambda a: _unit(model.transform(np.asarray(a, np.float32) @ basis))


def design_sims(design: str, embs_db: dict, embs_q: dict, y: np.ndarray, temperature: float) -> np.ndarray:
    """``[Q, N] float32`` query-database cosines in the design's space."""
    xd, xq = combine(embs_db), combine(embs_q)
    if design == "per-descriptor":
        heads = {d: train(embs_db[d], y) for d in embs_db}
        scale = np.float32(1 / np.sqrt(len(heads)))
        zd = np.concatenate([heads[d](embs_db[d]) for d in heads], 1) * scale
        zq = np.concatenate([heads[d](embs_q[d]) for d in heads], 1) * scale
        return zq @ zd.T
    if design == "ensemble":
        heads = [train(xd, y, loss, temperature=temperature, seed=s) for s in (0, 1) for loss in ("arc", "supcon")]
        return sum(h(xq) @ h(xd).T for h in heads) / len(heads)
    head = {"arc": lambda: train(xd, y), "mlp": lambda: train(xd, y, hidden=512), "lda": lambda: lda(xd, y),
            "supcon": lambda: train(xd, y, "supcon", temperature=temperature),
            "supcon-arc": lambda: train(xd, y, "supcon-arc", temperature=temperature)}[design]()
    return head(xq) @ head(xd).T


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("competition", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=DESIGNS)
    ap.add_argument("--temperature", type=float, default=0.05, help="SupCon temperature")
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
        y = np.unique(labels.astype(str), return_inverse=True)[1]
        known = ~solution["new_identity"].to_numpy(bool)
        truth = solution["identity"].to_numpy(dtype=object)

        def r1(sims: np.ndarray) -> float:
            ranked = retrieve.ranked_labels(sims[known], labels, 1)
            return float(metrics.rank_k(ranked, truth[known], ks=(1,))["R-1"])

        out["frozen"].append(r1(combine(embs_q) @ combine(embs_db).T))
        for design in args.designs:
            t = time.perf_counter()
            out[design].append(r1(design_sims(design, embs_db, embs_q, y, args.temperature)))
            print(f"seed {seed} {design}: R-1 {out[design][-1]:.3f} ({time.perf_counter() - t:.1f} s)", flush=True)
    print("| design | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |")
    print("|---|" + "---|" * (len(args.seeds) + 1))
    for design, values in out.items():
        print(f"| {design} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {np.mean(values):.3f} |")
    return out


if __name__ == "__main__":
    main()
