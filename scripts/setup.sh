#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install odistill with its extras.
#
#   scripts/setup.sh [EXTRAS]        EXTRAS defaults to "dev", e.g. "dev,docs"
#
# torch: if the environment has no torch yet, the CPU build torch==2.13.0 is installed first, so
# that the package's torch range never pulls a multi-GB CUDA build on a CPU-only machine. An
# environment that already has a torch (a GPU build, say) keeps it. Set ODISTILL_TORCH to install
# another spec instead (e.g. ODISTILL_TORCH="torch==2.13.0" or a CUDA index URL of your choice).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-dev}"
VENV="${ODISTILL_VENV:-.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  spec="${ODISTILL_TORCH:-torch==2.13.0}"
  echo "[setup] installing $spec"
  "${PIP[@]}" "$spec"
fi
echo "[setup] installing odistill[$EXTRAS] (editable)"
"${PIP[@]}" -e ".[$EXTRAS]"
"$VENV/bin/python" -c "import torch, odistill; print(f'[setup] ready: odistill {odistill.__version__}, torch {torch.__version__}')"
