#!/usr/bin/env bash
# Balancer comparison on the demo suite and an overfitting mixture (about 10-15 minutes on 2 CPU cores).
# Writes docs/balancers/results.md and docs/balancers/weights_*.png.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec .venv/bin/python scripts/experiments/balancers.py "$@"
