#!/usr/bin/env bash
# The GPU smoke test (mtft/bench/gpu_smoke.py, also `mtft-bench gpu-smoke`): every adapter trains ~30 bf16 steps,
# packed, on a Qwen2.5-0.5B-shaped model with random weights; checks that the loss falls, that nothing is NaN and
# that no step was skipped; prints tokens/s, MFU, peak GPU memory and step time over LoRA; exits 1 if a run failed.
#   scripts/gpu_smoke.sh [--out DIR] [--adapters lora,molora,...] [--steps N] [--model-dir DIR] [--tiny]
# Python: $PYTHON if set; else python3 when MTFT_SITE is set; else .venv/bin/python if present; else python3.
# MTFT_SITE: a folder that `pip install --no-index --no-deps --target DIR wheels/*.whl` filled, on a machine with
# no network (scripts/gpu/wheels.sh makes the wheels); it goes before the repo on PYTHONPATH.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${MTFT_SITE:-}" ]; then
  # dill (datasets' fingerprinting) pickles modules by value unless their path says site-packages, and fails
  case "$MTFT_SITE" in
    *site-packages*) ;;
    *) echo "gpu_smoke.sh: MTFT_SITE=$MTFT_SITE: its path must contain 'site-packages' (e.g. /tmp/mtft/site-packages)" >&2
       exit 2 ;;
  esac
  export PYTHONPATH="$MTFT_SITE:$repo${PYTHONPATH:+:$PYTHONPATH}"
  python=${PYTHON:-python3}
else
  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
  default=python3
  [ -x "$repo/.venv/bin/python" ] && default=$repo/.venv/bin/python
  python=${PYTHON:-$default}
fi
exec "$python" -m mtft.cli.bench gpu-smoke "$@"
