#!/usr/bin/env bash
# One machine with DeepSpeed's own launcher, NPROC processes (GPUs). The same overrides as torchrun.sh.
#   NPROC=8 scripts/launch/deepspeed.sh deepspeed=zero3 trainer.output_dir=runs/exp1
# The launcher appends --local_rank=N to the command line; mtft-train drops it and reads LOCAL_RANK instead.
set -euo pipefail
NPROC=${NPROC:-2}
exec deepspeed --num_gpus "$NPROC" --module mtft.cli.train "$@"
