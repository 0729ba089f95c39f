#!/usr/bin/env bash
# Create the peer baseline's virtual environment, scripts/experiments/peers/.venv-trl, apart from mtft's own .venv:
# TRL and its pins must not leak into mtft's environment, nor mtft into TRL's run (trl_sft.py does not import mtft).
# Idempotent: a stamp file records a finished install; delete the folder to rebuild.
# torch comes first and alone, pinned to the CPU build this machine carries (TORCH_SPEC overrides it, e.g. on a GPU
# machine), so that resolving trl's dependencies never replaces it with a CUDA build.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv-trl"
STAMP="$VENV/.installed"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

if [[ -f "$STAMP" ]]; then
    echo "setup_trl: $VENV is ready (remove it to rebuild)"
    exit 0
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "$TORCH_SPEC"
# Constrain torch to the version just installed, so nothing below can swap it for another build.
TORCH_VERSION="$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
"$VENV/bin/pip" install -q -r "$HERE/requirements-trl.txt" "torch==$TORCH_VERSION"
"$VENV/bin/python" -c 'import importlib.metadata as m
print("setup_trl:", *(f"{p}=={m.version(p)}" for p in ("torch", "trl", "peft", "transformers", "gguf", "datasets")))'
touch "$STAMP"
