"""XLA:CPU train step with and without glibc's huge-page tunable (rsjax/host_memory.py).

The model and step of benchmarks/vs_open_clip.py (ViT-Ti/16 at 128 px, 6-layer text tower,
batch 64, AdamW, float32) on random data, each setting in its own process (glibc reads tunables at
start), alternating so that outside load falls on both alike. Per setting: median step time, minor
page faults and kernel seconds per step, peak RSS, and the ratios huge pages / default.

  .venv/bin/python benchmarks/host_memory.py [--steps 12] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _path in (REPO, HERE, os.path.join(REPO, "tests")):
  if _path not in sys.path:
    sys.path.insert(0, _path)

from common import report  # noqa: E402
from rsjax import host_memory  # noqa: E402

SETTINGS = ("default", "huge_pages")
VOCAB, IMAGE_SIZE, BATCH = 212, 128, 64


def worker(steps: int) -> dict:
  """Times `steps` train steps after 3 warm-up steps in this process; returns the measurements."""
  import vs_open_clip as bench

  config = bench.run_config(bench.model_config(VOCAB), IMAGE_SIZE, 100, BATCH, 0)
  trainer = bench.RsjaxTrainer(config, bench.rsjax_init(config, 0))
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
           "tokens": rng.integers(1, VOCAB, (BATCH, bench.CONTEXT)).astype(np.int32)}
  for _ in range(3):
    trainer.step(batch)
  before, times = resource.getrusage(resource.RUSAGE_SELF), []
  for _ in range(steps):
    t = time.perf_counter()
    trainer.step(batch)
    times.append(time.perf_counter() - t)
  after = resource.getrusage(resource.RUSAGE_SELF)
  return {"step_s": float(np.median(times)),
          "faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
          "kernel_s_per_step": (after.ru_stime - before.ru_stime) / steps,
          "peak_rss_MiB": after.ru_maxrss / 1024}


def _run(setting: str, steps: int) -> dict:
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  env["JAX_PLATFORMS"] = "cpu"
  if setting == "huge_pages":
    env = host_memory.environment_with_huge_pages(env)
    if env is None:
      raise SystemExit("huge pages are not available here (not glibc, or THP is 'never')")
  out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", str(steps)],
                       env=env, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=12)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(worker(args.worker)))
    return
  runs = {s: [] for s in SETTINGS}
  for r in range(args.rounds):
    for setting in SETTINGS:
      runs[setting].append(_run(setting, args.steps))
      print(f"round {r + 1}/{args.rounds} {setting}: {runs[setting][-1]}", flush=True)
  rows = [{"setting": s, **{k: float(np.median([x[k] for x in runs[s]])) for k in runs[s][0]}}
          for s in SETTINGS]
  rows.append({"setting": "huge_pages / default",
               **{k: rows[1][k] / rows[0][k] for k in runs[SETTINGS[0]][0]}})
  report(rows, __file__, {"tunable": host_memory.TUNABLE, "steps": args.steps,
                          "rounds": args.rounds, "runs": runs})


if __name__ == "__main__":
  main()
