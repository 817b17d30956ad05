#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create it, copy and install rsjax on every worker, run
# `rsjax train` on all workers at once (one JAX process per host), delete the slice.
#
#   ZONE=us-west4-a launch/tpu_vm.sh NAME ACCELERATOR CONFIG WORKDIR [--set key=value ...]
#   ZONE=us-west4-a launch/tpu_vm.sh rs-b16 v5litepod-256 \
#       configs/pretrain_vit_b16_siglip.py:v5e-256 /mnt/shared/runs/b16 --set train.steps=20000
#
# WORKDIR (checkpoints, metrics) and the data must be visible to every worker under the same path:
# a Filestore/NFS mount or a gcsfuse-mounted bucket. Every process writes its own shards of each
# orbax checkpoint there; only process 0 writes metrics and logs.
#
# Environment:
#   ZONE      (required) zone with quota for ACCELERATOR
#   PROJECT   gcloud project (default: the configured one)
#   RUNTIME   TPU software version (default: v2-alpha-tpuv5-lite for v5e, tpu-ubuntu2204-base else)
#   QUEUED=1  request the slice as a queued resource and wait until it is ACTIVE
#   SPOT=1    spot capacity (pre-emptible: rsjax checkpoints on SIGTERM; rerun this script to resume)
#   KEEP=1    keep the slice after the run (default: delete it, also on failure or Ctrl-C)
#   SETUP     extra shell run on every worker before training (e.g. mounting the shared disk)
#   CREATE=0  reuse an existing slice called NAME
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: ZONE=... launch/tpu_vm.sh NAME ACCELERATOR CONFIG WORKDIR [--set key=value ...]"
name=${1:?$usage}; accelerator=${2:?$usage}; config=${3:?$usage}; workdir=${4:?$usage}
shift 4
zone=${ZONE:?set ZONE, e.g. ZONE=us-west4-a}
case "$accelerator" in
  v5litepod-*|v5e-*) runtime=${RUNTIME:-v2-alpha-tpuv5-lite} ;;
  *) runtime=${RUNTIME:-tpu-ubuntu2204-base} ;;
esac
gc=(gcloud compute tpus)
common=(--zone "$zone")
[[ -n "${PROJECT:-}" ]] && common+=(--project "$PROJECT")

cleanup() {
  if [[ "${KEEP:-0}" != 1 ]]; then
    echo "deleting $name"
    if [[ "${QUEUED:-0}" == 1 ]]; then
      "${gc[@]}" queued-resources delete "$name-qr" "${common[@]}" --force --quiet || true
    else
      "${gc[@]}" tpu-vm delete "$name" "${common[@]}" --quiet || true
    fi
  fi
}

if [[ "${CREATE:-1}" == 1 ]]; then
  trap cleanup EXIT
  spot=(); [[ "${SPOT:-0}" == 1 ]] && spot=(--spot)
  if [[ "${QUEUED:-0}" == 1 ]]; then
    "${gc[@]}" queued-resources create "$name-qr" "${common[@]}" --node-id "$name" \
      --accelerator-type "$accelerator" --runtime-version "$runtime" "${spot[@]}"
    until [[ "$("${gc[@]}" queued-resources describe "$name-qr" "${common[@]}" \
                 --format='value(state.state)')" == ACTIVE ]]; do
      echo "waiting for $name-qr to become ACTIVE"; sleep 60
    done
  else
    "${gc[@]}" tpu-vm create "$name" "${common[@]}" --accelerator-type "$accelerator" \
      --version "$runtime" "${spot[@]}"
  fi
fi

# Copy the committed tree (plus uncommitted edits of tracked files) to every worker and install.
archive=$(mktemp -d)/rsjax.tar.gz
git ls-files -z | tar --null -czf "$archive" -T -
"${gc[@]}" tpu-vm scp "$archive" "$name:rsjax.tar.gz" "${common[@]}" --worker=all
jax_version=$(sed -n 's/.*"jax==\([0-9.]*\)".*/\1/p' pyproject.toml)
"${gc[@]}" tpu-vm ssh "$name" "${common[@]}" --worker=all --command "
  set -e; ${SETUP:-true}
  mkdir -p rsjax && tar -xzf rsjax.tar.gz -C rsjax && cd rsjax
  python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]==$jax_version'"

# All workers at once; RSJAX_DISTRIBUTED=1 makes rsjax call jax.distributed.initialize(), which
# finds the other workers from the TPU metadata.
args=$(printf ' %q' --config "$config" --workdir "$workdir" "$@")
"${gc[@]}" tpu-vm ssh "$name" "${common[@]}" --worker=all --command "
  cd rsjax && RSJAX_DISTRIBUTED=1 .venv/bin/rsjax train$args"
