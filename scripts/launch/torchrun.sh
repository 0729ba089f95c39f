#!/usr/bin/env bash
# One machine, NPROC processes: one per GPU (or CPU processes over gloo where there is no CUDA).
# Everything after the script name goes to mtft-train as Hydra overrides.
#   NPROC=8 scripts/launch/torchrun.sh model=hf model.name_or_path=/models/llama-3-8b deepspeed=zero2 \
#       trainer.output_dir=runs/exp1
# Stop with SIGTERM to torchrun: it forwards the signal, every rank finishes its step and the run saves a
# checkpoint (resume with trainer.resume=auto). torchrun waits only 30 s for that before it kills the ranks.
# MAX_RESTARTS=N: after a lost worker torchrun restarts the group up to N times; with trainer.resume=auto each
# restart resumes from the newest complete checkpoint, in the first attempt's output directory.
set -euo pipefail
NPROC=${NPROC:-2}
exec torchrun --standalone --nproc_per_node "$NPROC" --max-restarts "${MAX_RESTARTS:-0}" -m mtft.cli.train "$@"
