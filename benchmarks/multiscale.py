"""The feature pyramid on small objects and mixed scales: the plain ViT against pyramid options,
at equal training wall-clock time on this machine.

The demo recipe (configs/smoke.py with data.challenges=True: RS-Synth plus its v2 `multiscale`
and `small_objects` evaluation subsets) trained once per variant and seed:

- "plain": the ViT alone (model.image.pyramid.enabled=False), trained --steps steps;
- "pyramid": the simple pyramid (levels at strides 4 and 8 resampled from the trunk's tokens);
- "pyramid_lateral": the same with lateral inputs from the pixels into the fine levels
  (model.image.pyramid.lateral=pixels, a hybrid FPN: rsjax/models/pyramid.py);
- "pyramid_open": the simple pyramid with its gate starting at 1 (gate_init=1.0), not 0.

Equal wall clock: a short calibration run per variant (60 steps, the last 40 timed from the
trainer's images/s) gives its step time, and each variant trains for as many steps as fit in the
plain ViT's --steps; the rows record the steps and the measured wall time. Each run is then
evaluated on the test split and both subsets. Finished runs under --workdir are reused; every
run takes benchmarks/common.HEAVY_LOCK.

Rows: one per variant, subset and seed (`variant`, `subset`, `seed`, `mR`, `steps`,
`train_wall_s`, `params`).

  .venv/bin/python benchmarks/multiscale.py [--variants plain,pyramid,pyramid_lateral] [--seeds 0,1]
      [--steps 1150] [--workdir runs/multiscale]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import REPO, markdown_table, report, rsjax, train_and_evaluate  # noqa: E402

CONFIG = os.path.join(REPO, "configs", "smoke.py")
SUBSETS = ("test", "small_objects", "multiscale")
VARIANTS = {
    "plain": ["model.image.pyramid.enabled=False"],
    "pyramid": ["model.image.pyramid.enabled=True"],
    "pyramid_lateral": ["model.image.pyramid.enabled=True", "model.image.pyramid.lateral=pixels"],
    "pyramid_open": ["model.image.pyramid.enabled=True", "model.image.pyramid.gate_init=1.0"],
}
CALIBRATION_STEPS = 60


def sets(*overrides: str) -> list[str]:
  return [x for o in ("data.challenges=True", *overrides) for x in ("--set", o)]


def images_per_s(variant: str, workdir: str) -> float:
  """The variant's training throughput from a short run (its last logged interval)."""
  run = os.path.join(workdir, f"calibrate_{variant}")
  metrics = os.path.join(run, "metrics.jsonl")
  if not os.path.exists(metrics):
    rsjax("train", "--config", CONFIG, *sets(*VARIANTS[variant],
          f"train.steps={CALIBRATION_STEPS}", "train.log_every=20", "eval.every=0",
          "eval.at_step0=False", f"train.checkpoint_every={CALIBRATION_STEPS}"), "--workdir", run)
  with open(metrics) as f:
    rows = [json.loads(line) for line in f if "images_per_s" in line]
  return float(rows[-1]["images_per_s"])


def run(variant: str, steps: int, seed: int, workdir: str) -> list[dict]:
  """Train (unless done) and evaluate (unless done); the variant's rows, one per subset."""
  args = ["--config", CONFIG, *sets(*VARIANTS[variant], f"train.steps={steps}",
                                    f"train.seed={seed}")]
  full, wall = train_and_evaluate(args, workdir, SUBSETS)
  return [{"variant": variant, "subset": subset, "seed": seed,
           "mR": full["splits"][subset]["retrieval"]["mR"], "steps": steps,
           "train_wall_s": wall, "params": full["efficiency"]["params"]["total"]}
          for subset in SUBSETS]


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default=os.path.join(REPO, "runs", "multiscale"))
  p.add_argument("--variants", default="plain,pyramid,pyramid_lateral")
  p.add_argument("--seeds", default="0,1")
  p.add_argument("--steps", type=int, default=1150, help="the plain ViT's training steps")
  args = p.parse_args()
  variants = args.variants.split(",")
  for v in variants:
    if v not in VARIANTS:
      raise SystemExit(f"--variants: unknown {v!r} (use {', '.join(VARIANTS)})")
  speed = {v: images_per_s(v, args.workdir) for v in {"plain", *variants}}
  steps = {v: max(1, round(args.steps * speed[v] / speed["plain"])) for v in variants}
  print("images/s: " + json.dumps({v: round(s, 1) for v, s in speed.items()}) +
        "; steps at equal wall clock: " + json.dumps(steps), flush=True)
  rows = []
  for seed in (int(s) for s in args.seeds.split(",")):
    for v in variants:
      rows += run(v, steps[v], seed, os.path.join(args.workdir, f"{v}_{steps[v]}_s{seed}"))
      print(markdown_table(rows[-len(SUBSETS):]), flush=True)
  path = report(rows, __file__, meta={"images_per_s": speed, "plain_steps": args.steps})
  print(f"wrote {path}", flush=True)


if __name__ == "__main__":
  main()
