#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): what odistill does on one CUDA GPU, in at most 8 minutes,
# written to one JSON file. CI never runs it; run it whenever a GPU machine is at hand and keep the JSON.
#
#   scripts/gpu_check.sh [OUT.json] [gpu_check.py options]      on the GPU machine (default gpu_check.json)
#   scripts/gpu_check.sh --dry-run [OUT.json]                   the same steps at toy sizes on this CPU
#   scripts/gpu_check.sh --fetch-wheels DIR                     (on a machine with PyPI) wheels for an
#                                                               offline GPU machine with Python 3.12
#
# odistill is used from this checkout (PYTHONPATH), not installed. On a machine without network, copy the
# checkout and a wheel folder there and set ODISTILL_WHEELS=DIR: those wheels are installed into a
# private folder first (nothing else on the machine changes). A check whose package is still missing
# (TRL, Liger-Kernel, vLLM, papermill) is recorded as skipped, with the reason; the others run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

# The packages the checks use that a CUDA PyTorch image usually lacks, each with the dependencies of its
# own that such an image lacks too (torch, transformers, accelerate, numpy, pyarrow ... are assumed there).
WHEELS=(
  datasets dill multiprocess
  trl liger-kernel
  papermill nbclient nbformat jupyter-client jupyter-core ipykernel ipython ipython-pygments-lexers
  traitlets pyzmq tornado comm debugpy jedi parso prompt-toolkit pexpect ptyprocess stack-data asttokens
  executing pure-eval decorator matplotlib-inline wcwidth nest-asyncio platformdirs fastjsonschema
  jsonschema jsonschema-specifications referencing rpds-py tenacity ansicolors entrypoints
)

if [ "${1:-}" = "--fetch-wheels" ]; then
  dir="${2:?usage: scripts/gpu_check.sh --fetch-wheels DIR}"
  mkdir -p "$dir"
  for name in "${WHEELS[@]}"; do
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux1_x86_64 -d "$dir" "$name" || echo "[gpu-check] no wheel for $name"
  done
  du -sh "$dir"
  exit 0
fi

dry=()
if [ "${1:-}" = "--dry-run" ]; then
  dry=(--dry-run)
  shift
fi
OUT="${1:-gpu_check.json}"
shift || true

if [ -n "${ODISTILL_WHEELS:-}" ]; then
  site="${TMPDIR:-/tmp}/odistill-gpu-check-site"
  "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$ODISTILL_WHEELS"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# 8 minutes for the whole check; each child process (a step, a notebook) gets at most 200 s of it
timeout 480 "$PY" scripts/gpu_check.py "${dry[@]}" --out "$OUT" --timeout 200 "$@"
