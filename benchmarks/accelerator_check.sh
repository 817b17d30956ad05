#!/usr/bin/env bash
# The one command to run whenever a GPU or TPU is at hand (under 8 minutes on one GPU):
#
#   benchmarks/accelerator_check.sh [--dry-run] [--out FILE] [--parts mfu,train,search,plan]
#
# Writes benchmarks/results/accelerator_check.json: ViT-B/16 bf16 MFU and peak memory, a 50-step
# `rsjax train` on RS-Synth checkpointed and resumed half-way, binary and dense search on
# the device, and `rsjax plan` for the MFU model on this chip beside the measured memory
# (benchmarks/accelerator_check.py). --dry-run: the same parts on the CPU at toy sizes.
#
# Runs on a bare accelerator machine that has JAX, flax, optax and orbax-checkpoint: rsjax runs
# from this checkout (PYTHONPATH), and the packages such machines lack (grain, ml-collections,
# sentencepiece) are installed from a wheel folder when one was carried along
# (RSJAX_WHEELS, default .wheels/; `make wheels` fills it), else the parts that need them fail
# and say so while the others run. PYTHON picks the interpreter (default: .venv's if present, as
# for the CPU dry run, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ " $* " == *" --dry-run "* && -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
wheels=${RSJAX_WHEELS:-.wheels}
if ! "$PYTHON" -c "import grain, ml_collections, sentencepiece" 2>/dev/null; then
  if [[ -d "$wheels" ]]; then
    echo "accelerator_check: installing grain, ml-collections, sentencepiece from $wheels"
    "$PYTHON" -m pip install -q --no-index --find-links "$wheels" \
      grain==0.2.18 ml-collections==1.1.0 sentencepiece==0.2.3
  else
    echo "accelerator_check: grain / ml-collections / sentencepiece missing and no $wheels folder;" \
         "the train and plan parts will fail (make wheels, then carry .wheels)"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" benchmarks/accelerator_check.py "$@"
