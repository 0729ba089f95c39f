#!/usr/bin/env bash
# Fill DIR with the wheels a GPU machine without network needs to run mtft, when its image already has torch,
# transformers, peft, triton and pytest (scripts/gpu/offline_requirements.py says which, at this venv's versions).
#   scripts/gpu/wheels.sh DIR                  # on a machine with network; DIR/requirements.txt lists them
# then on the GPU machine (README, "GPU smoke test"):
#   pip install --no-index --no-deps --target /tmp/mtft/site-packages DIR/*.whl
#   MTFT_SITE=/tmp/mtft/site-packages scripts/gpu_smoke.sh   # or PYTHONPATH=that:$REPO python -m mtft.cli.train
# Environment: PYTHON (the environment whose versions to match; default .venv/bin/python), PY_VERSION (the GPU
# machine's Python, default 3.12). Binary wheels are for CPython PY_VERSION on manylinux x86_64 (glibc >= 2.17 up
# to 2.28); deepspeed and antlr4-python3-runtime are published as source only and are built here (pure Python).
set -euo pipefail
dir=${1:?usage: scripts/gpu/wheels.sh DIR}
repo=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
py_version=${PY_VERSION:-3.12}
source_only="deepspeed antlr4-python3-runtime"

mkdir -p "$dir"
"$python" "$repo/scripts/gpu/offline_requirements.py" --python-version "$py_version" >"$dir/requirements.txt"
binary=() built=()
while read -r spec; do
  if [[ " $source_only " == *" ${spec%%==*} "* ]]; then built+=("$spec"); else binary+=("$spec"); fi
done <"$dir/requirements.txt"

"$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$dir" \
  --python-version "$py_version" --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  "${binary[@]}"
# No build isolation: the build uses this venv's setuptools and torch (DeepSpeed's setup.py imports torch); no
# DeepSpeed op is prebuilt (DS_BUILD_OPS unset), so the wheel is pure Python and any CUDA torch can load it.
"$python" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$dir" "${built[@]}"

count=$(ls "$dir"/*.whl | wc -l)
if [ "$count" -ne "$(wc -l <"$dir/requirements.txt")" ]; then
  echo "wheels.sh: $count wheels in $dir for $(wc -l <"$dir/requirements.txt") requirements (stale wheels there?)" >&2
  exit 1
fi
echo "$count wheels for Python $py_version in $dir ($(du -sh "$dir" | cut -f1)):"
ls "$dir"/*.whl | xargs -n1 basename
