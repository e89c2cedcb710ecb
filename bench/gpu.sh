#!/usr/bin/env bash
# The GPU speed goals in one run, one JSON (bench/gpu.py; bench/README.md, GPU, has the device command).
#   bench/gpu.sh --tiny [--out FILE]     every stage at toy sizes on the CPU, the JSON checked (what CI runs)
#   bench/gpu.sh [--out FILE] [--stages embed,local,train,rerank]   the GPU run (needs bench/gpu-inputs/)
#   bench/gpu.sh --prepare               here, with PyPI and ../shared/data: write bench/gpu-inputs/ to carry
# Python: $PYTHON, else the checkout's .venv, else python3 (the device machine's, which holds torch).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-}
if [[ -z $py ]]; then
  if [[ -x $root/.venv/bin/python ]]; then py=$root/.venv/bin/python; else py=python3; fi
fi
# the kit from this checkout, whatever else is installed
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if [[ ${1:-} == --prepare ]]; then
  shift
  exec "$py" "$root/bench/gpu_inputs.py" "$@"
fi
# the device machine has no kornia: install the carried wheels (bench/gpu-inputs/wheels) outside the image
wheels=$root/bench/gpu-inputs/wheels
if ! "$py" -c 'import kornia' 2>/dev/null && compgen -G "$wheels/*.whl" >/dev/null; then
  site=${KIT_BENCH_SITE:-/tmp/kit-bench-site}
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$PYTHONPATH:$site"
fi
exec "$py" "$root/bench/gpu.py" "$@"
