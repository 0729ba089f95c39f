#!/usr/bin/env bash
# Several machines: run this on every node, with the same MASTER_ADDR (a host all nodes reach), NNODES and
# RUN_ID, and NPROC processes per node. torchrun's c10d rendezvous assigns the ranks.
#   node 0:  NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 scripts/launch/torchrun_multinode.sh trainer.output_dir=/shared/runs/exp1
#   node 1:  NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 scripts/launch/torchrun_multinode.sh trainer.output_dir=/shared/runs/exp1
# trainer.output_dir must be on a filesystem every node sees: ranks write their checkpoint shards there.
# NCCL: set NCCL_SOCKET_IFNAME (and NCCL_IB_HCA for InfiniBand) when the nodes have several network interfaces.
# MAX_RESTARTS=N (the same on every node): after a lost worker torchrun restarts the group up to N times; add
# trainer.resume=auto so that each restart resumes from the newest complete checkpoint.
set -euo pipefail
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER_ADDR:?set MASTER_ADDR}"
NPROC=${NPROC:-8}
MASTER_PORT=${MASTER_PORT:-29500}
RUN_ID=${RUN_ID:-mtft}
exec torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC" \
    --max-restarts "${MAX_RESTARTS:-0}" \
    --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "$RUN_ID" \
    -m mtft.cli.train "$@"
