#!/usr/bin/env bash
# The GPU benchmark as one device call: install the offline wheels (scripts/gpu/wheels.sh) if WHEELS holds any,
# then run `mtft-bench gpu` once per SHAPE:CONFIGS argument, each with a time limit, so that one slow shape
# cannot take the others' results with it. Writes OUT/gpu-SHAPE.json (after every round) and OUT/bench-SHAPE.txt.
#   scripts/gpu/bench.sh OUT 0.5b:plain,lora,lora+fused,lora+compile+fused 1.5b:plain,lora+compile+chunked+fused
# Environment: WHEELS (default .gpu-wheels), LIMIT (seconds per shape, default 280), BENCH_ARGS (more flags for
# mtft-bench gpu, e.g. "--rounds 2 --profile OUT/profile.txt"; "--dry-run" runs it all on a CPU).
# Record what it prints in docs/results/gpu.md with the date, device, versions and command.
set -uo pipefail
out=${1:?usage: scripts/gpu/bench.sh OUT SHAPE:CONFIGS ...}
shift
repo=$(cd "$(dirname "$0")/../.." && pwd)
wheels=${WHEELS:-$repo/.gpu-wheels}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if compgen -G "$wheels/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/mtft/site-packages \
    "$wheels"/*.whl || exit 9
  export PYTHONPATH="/tmp/mtft/site-packages:$repo${PYTHONPATH:+:$PYTHONPATH}"
  python=python3
else
  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
  python=${PYTHON:-python3}
  [ -x "$repo/.venv/bin/python" ] && python=${PYTHON:-$repo/.venv/bin/python}
fi
mkdir -p "$out"
status=0
for spec in "$@"; do
  shape=${spec%%:*} configs=${spec#*:}
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
  timeout "${LIMIT:-280}" "$python" -m mtft.cli.bench gpu --shape "$shape" --configs "$configs" \
    --out "$out/gpu-$shape.json" ${BENCH_ARGS:-} >"$out/bench-$shape.txt" 2>&1
  code=$?
  echo "$shape: exit $code"
  grep -v -e Warning -e warn -e tokenizing "$out/bench-$shape.txt" | tail -25
  [ "$code" -eq 0 ] || status=1
done
exit $status
