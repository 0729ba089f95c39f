#!/usr/bin/env bash
# One machine with DeepSpeed's own launcher, NPROC processes (GPUs). The same overrides as torchrun.sh.
#   NPROC=8 scripts/launch/deepspeed.sh deepspeed=zero3 trainer.output_dir=runs/exp1
# The launcher appends --local_rank=N to the command line; mtft-train drops it and reads LOCAL_RANK instead.
set -euo pipefail
NPROC=${NPROC:-2}
# DeepSpeed's launcher, unlike torchrun, leaves every rank all the machine's threads: NPROC ranks then fight
# over the cores (measured 4x slower end to end with 2 CPU ranks). Give each rank its share.
THREADS=$(( $(nproc) / NPROC ))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( THREADS > 0 ? THREADS : 1 ))}
exec deepspeed --num_gpus "$NPROC" --module mtft.cli.train "$@"
