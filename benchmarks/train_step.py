"""Train-step speed of configs on the present devices: step time, images/s and achieved FLOP/s.

FLOPs come from XLA's cost analysis of the compiled step; the machine's peak is measured with a large
float32 matmul in the same process, so the last column says how close the step gets to this machine's
limit. Usage:

  .venv/bin/python benchmarks/train_step.py [--config configs/smoke.py] [--steps 5] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import report  # noqa: E402
from rsjax import optim, parallel  # noqa: E402
from rsjax import state as state_lib  # noqa: E402
from rsjax.train import step as train_step  # noqa: E402
from rsjax.config import load_config  # noqa: E402


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of an n x n float32 matmul (best of `repeats`)."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(repeats))
  return 2 * n ** 3 / best


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def measure(config, steps: int) -> dict:
  mesh = parallel.make_mesh(config)
  model = state_lib.create_model(config)
  tx = optim.make_optimizer(config.train)
  state, shardings = state_lib.init_state(model, tx, config, mesh, jax.random.key(0))
  step_fn = train_step.compile_train_step(train_step.make_train_step(model, tx, config, mesh), shardings, mesh)
  b, s, length = config.train.batch_size, config.data.image_size, config.model.text.context_length
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
           "tokens": rng.integers(4, 200, (b, length)).astype(np.int32),
           "label": rng.integers(0, 7, b).astype(np.int32)}  # read by train.positives="label"
  with jax.set_mesh(mesh):
    sharded = parallel.shard_batch(batch, mesh)
    compiled = step_fn.lower(state, sharded).compile()
    flops = float(compiled.cost_analysis().get("flops", float("nan")))
    state, m = compiled(state, sharded)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
      sharded = parallel.shard_batch(batch, mesh)
      t = time.perf_counter()
      state, m = compiled(state, sharded)
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t)
  step_time = float(np.median(times))
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  return {"params_M": n_params / 1e6, "batch": b, "step_s": step_time, "images_per_s": b / step_time,
          "GFLOP_per_step": flops / 1e9, "GFLOP_per_s": flops / step_time / 1e9}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--config", default="configs/smoke.py")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--set", action="append", default=[])
  args = parser.parse_args()
  peak = matmul_peak()
  config = load_config(args.config, args.set)
  row = {"config": args.config, "overrides": " ".join(args.set) or "-", **measure(config, args.steps)}
  row["matmul_peak_GFLOP_per_s"] = peak / 1e9
  row["fraction_of_peak"] = row["GFLOP_per_s"] * 1e9 / peak
  report([row], __file__, {"devices": str(jax.devices())})


if __name__ == "__main__":
  main()
