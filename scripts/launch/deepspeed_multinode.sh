#!/usr/bin/env bash
# Several machines with DeepSpeed's launcher: run once, on the first node of HOSTFILE. It starts the other
# nodes over passwordless ssh (pdsh), so the same environment (venv, data paths) must exist on all of them.
#   HOSTFILE=scripts/launch/hostfile.example scripts/launch/deepspeed_multinode.sh deepspeed=zero3 \
#       trainer.output_dir=/shared/runs/exp1
# Variables listed in ./.deepspeed_env (NAME=value lines) are exported on every node: e.g. NCCL_SOCKET_IFNAME, and
# OMP_NUM_THREADS=<cores per node / GPUs per node>, since DeepSpeed's launcher, unlike torchrun, sets no thread
# count and the ranks of a node would otherwise fight over its cores.
set -euo pipefail
: "${HOSTFILE:?set HOSTFILE (lines of: hostname slots=N)}"
MASTER_ADDR=${MASTER_ADDR:-$(head -n 1 "$HOSTFILE" | cut -d' ' -f1)}
exec deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" \
    --module mtft.cli.train "$@"
