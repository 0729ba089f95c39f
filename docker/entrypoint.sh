#!/usr/bin/env bash
# The image's entrypoint. A command runs as given; anything else is handed to mtft-train:
#   docker run IMAGE                                      -> mtft-train (the demo)
#   docker run IMAGE adapter=smora trainer.max_steps=200  -> mtft-train adapter=smora trainer.max_steps=200
#   docker run IMAGE --config-dir /data/configs data=mine -> mtft-train --config-dir /data/configs data=mine
#   docker run IMAGE torchrun --nproc_per_node 8 -m mtft.cli.train ...   (or deepspeed, mtft-eval, bash, ...)
#   docker run -p 8000:8000 IMAGE mtft-serve checkpoint=/data/run/checkpoint-N host=0.0.0.0
set -euo pipefail
if [ "$#" -eq 0 ]; then
    exec mtft-train
fi
case "$1" in
    -* | *=*) exec mtft-train "$@" ;;  # a flag or a Hydra override
esac
if command -v "$1" >/dev/null 2>&1; then
    exec "$@"
fi
exec mtft-train "$@"
