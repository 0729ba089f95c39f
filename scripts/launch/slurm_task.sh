#!/usr/bin/env bash
# One training process per Slurm task (srun starts one per GPU): maps Slurm's task numbering onto the variables
# torch.distributed reads. Used by slurm.sbatch; runnable by hand with SLURM_* set, as the tests do.
set -euo pipefail
export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID
: "${MASTER_ADDR:?set MASTER_ADDR}" "${MASTER_PORT:?set MASTER_PORT}"
exec python -m mtft.cli.train "$@"
