#!/usr/bin/env bash
# Train on this machine's devices: launch/local.sh CONFIG WORKDIR [--set key=value ...]
# Example: launch/local.sh configs/smoke.py runs/demo --set train.steps=100
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: launch/local.sh CONFIG WORKDIR [--set key=value ...]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [--set key=value ...]}
shift 2
make install >/dev/null
exec .venv/bin/rsjax train --config "$config" --workdir "$workdir" "$@"
