#!/usr/bin/env bash
# Create .venv and install the project with everything its jobs and tests use.
# Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch 2.14.1 + torchvision 0.29.1 are the tested pair (CompressAI imports torchvision).
.venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, compressai, ray, oml" >/dev/null 2>&1 || {
  echo "setup: the environment is incomplete; rerun with pip's output: .venv/bin/pip install -e '.[dev]'" >&2
  exit 1
}
