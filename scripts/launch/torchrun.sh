#!/usr/bin/env bash
# Data-parallel mtft on one machine: NPROC processes, one per GPU (or CPU processes over gloo on a machine
# without CUDA). Everything after the script name is passed to mtft-train as Hydra overrides.
#   NPROC=8 scripts/launch/torchrun.sh trainer.output_dir=runs/exp1 model=hf model.name_or_path=/models/x
# Give trainer.output_dir explicitly: the default holds a timestamp that each rank would resolve on its own.
set -euo pipefail
NPROC=${NPROC:-2}
exec torchrun --standalone --nproc_per_node "$NPROC" -m mtft.cli.train "$@"
