"""How long a checkpoint save stalls training, synchronous against asynchronous (orbax), side by side.

  .venv/bin/python benchmarks/checkpoint.py [--config configs/pretrain_vit_b16_siglip.py]
      [--steps 40] [--every 10] [--dir /tmp/rsjax_ckpt_bench]

Builds the config's real train state (parameters and Adam moments; ViT-B/16 + CLIP text tower by
default, 149.6M parameters) and runs a loop of fixed-cost jitted steps that saves that state with
rsjax's Checkpointer every `--every` steps, once with train.async_checkpoints off and once on.
For each mode it reports the baseline step time (steps with no save in flight), the time the
save call blocks the loop, the extra time of the steps that ran while a background write was
going on, and their sum per save: the training time a save costs. The step is a stand-in of
fixed cost (a chain of matmuls), since the question is the save's stall, not the model's speed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import grain  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import report  # noqa: E402
from rsjax import optim, parallel, state as state_lib  # noqa: E402
from rsjax.checkpoint import Checkpointer  # noqa: E402
from rsjax.config import load_config  # noqa: E402


def stand_in_step(size: int):
  """A jitted step of fixed cost: x -> tanh(x @ w) four times. Returns (step, x)."""
  w = jnp.asarray(np.random.default_rng(0).standard_normal((size, size), np.float32) / size**0.5)

  @jax.jit
  def step(x):
    for _ in range(4):
      x = jnp.tanh(x @ w)
    return x

  return step, jnp.ones((size, size), jnp.float32)


def measure(mode: str, state, config, directory: str, steps: int, every: int, size: int) -> dict:
  shutil.rmtree(directory, ignore_errors=True)
  ckpt = Checkpointer(directory, max_to_keep=2, async_save=mode == "async")
  data = iter(grain.MapDataset.range(10**6).to_iter_dataset())
  step, x = stand_in_step(size)
  x = jax.block_until_ready(step(x))  # compile
  times, saves, in_flight = [], [], []
  writing = False
  for i in range(1, steps + 1):
    start = time.perf_counter()
    x = jax.block_until_ready(step(x))
    times.append(time.perf_counter() - start)
    in_flight.append(writing)
    next(data)
    if i % every == 0:
      start = time.perf_counter()
      ckpt.save(i, state, data, config)  # waits for the previous async save first
      saves.append(time.perf_counter() - start)
      writing = mode == "async"
    elif writing and not ckpt.manager.is_saving_in_progress():
      writing = False
  start = time.perf_counter()
  ckpt.close()
  final_wait = time.perf_counter() - start
  baseline = statistics.median(t for t, w in zip(times, in_flight) if not w)
  overlap = sum(t - baseline for t, w in zip(times, in_flight) if w)
  size_bytes = sum(os.path.getsize(os.path.join(root, f))
                   for root, _, files in os.walk(os.path.join(directory, str(steps)))
                   for f in files)
  shutil.rmtree(directory, ignore_errors=True)
  n = len(saves)
  return {"mode": mode, "checkpoint_mib": round(size_bytes / 2**20, 1),
          "saves": n, "step_ms": round(1e3 * baseline, 1),
          "blocking_s_per_save": round(statistics.mean(saves), 3),
          "slowdown_s_per_save": round(overlap / n, 3),
          "stall_s_per_save": round(statistics.mean(saves) + overlap / n, 3),
          "close_wait_s": round(final_wait, 3)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/pretrain_vit_b16_siglip.py")
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--every", type=int, default=10)
  parser.add_argument("--step-size", type=int, default=1024,
                      help="matmul size of the stand-in step (1024: ~20-60 ms on a CPU)")
  parser.add_argument("--dir", default="/tmp/rsjax_ckpt_bench")
  args = parser.parse_args()

  config = load_config(args.config)
  mesh = parallel.make_mesh(config, jax.devices()[:1])
  model, tx = state_lib.create_model(config), optim.make_optimizer(config.train)
  start = time.perf_counter()
  state, _ = state_lib.init_state(model, tx, config, mesh, jax.random.key(0))
  jax.block_until_ready(state)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  print(f"train state of {n_params / 1e6:.1f}M parameters built in "
        f"{time.perf_counter() - start:.0f} s", flush=True)
  rows = [measure(mode, state, config, args.dir, args.steps, args.every, args.step_size)
          for mode in ("sync", "async")]
  sync, asyn = rows
  for row in rows:
    row["stall_vs_sync"] = round(row["stall_s_per_save"] / sync["stall_s_per_save"], 3)
  report(rows, __file__, meta={"config": args.config, "params_millions": round(n_params / 1e6, 1),
                               "devices": str(jax.devices()[0].platform)})
  print(f"async save stalls the loop {asyn['stall_vs_sync']:.2f}x as long as a sync save",
        flush=True)


if __name__ == "__main__":
  main()
