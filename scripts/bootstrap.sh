#!/usr/bin/env bash
# Create .venv and install safety-lora (editable) with every extra.
# Without an NVIDIA GPU it installs a CPU build of torch first (a local wheel when pip's
# find-links has one, else PyTorch's CPU index), so pip never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "${PIP[@]}" install "torch>=2.1"
  else
    # A local CPU wheel when pip's find-links has one (then its dependencies from the index),
    # else PyTorch's own CPU index.
    if "${PIP[@]}" install --no-deps --no-index "torch==2.13.0" 2>/dev/null; then
      "${PIP[@]}" install "torch==2.13.0"
    else
      "${PIP[@]}" install --index-url https://download.pytorch.org/whl/cpu "torch>=2.1"
    fi
  fi
fi
"${PIP[@]}" install -e ".[nudenet,serve,ray,minilm,workbench,dev]"
