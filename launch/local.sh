#!/usr/bin/env bash
# Train on this machine's devices, as one process or as N processes of a multi-host run:
#   launch/local.sh [--processes N] [--devices-per-process K] CONFIG WORKDIR [--set key=value ...]
# Examples:
#   launch/local.sh configs/smoke.py runs/demo --set train.steps=100
#   launch/local.sh --processes 2 configs/smoke.py runs/two    # rehearse a 2-host run (docs/scaling.md)
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: launch/local.sh [--processes N] [--devices-per-process K] CONFIG WORKDIR [--set key=value ...]"
processes=1
devices=()
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --processes) processes=${2:?$usage}; shift 2 ;;
    --devices-per-process) devices=(--devices-per-process "${2:?$usage}"); shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
config=${1:?$usage}
workdir=${2:?$usage}
shift 2
make install >/dev/null
if [[ $processes == 1 && ${#devices[@]} == 0 ]]; then
  exec .venv/bin/rsjax train --config "$config" --workdir "$workdir" "$@"
fi
exec .venv/bin/python -m rsjax.local_cluster --processes "$processes" "${devices[@]}" \
  --log-dir "$workdir/logs" -- train --config "$config" --workdir "$workdir" "$@"
