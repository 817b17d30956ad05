"""What robust training buys: each recipe trained with and without `data.corruptions` at equal
steps, two seeds each, then scored by `rsjax eval --robustness` (ten corruptions x severities
1..5, corruption seed 0).

Recipes:
- `rsscn7`: configs/rsscn7_scratch.py (real aerial images, class prompts, 64-bit codes; val
  split, 448 images), `:robust=P` for the robust variant;
- `demo`: configs/smoke.py, the `make demo` model on RS-Synth (test split), with
  `--set data.corruptions.probability=P`.
A robust variant P:S corrupts a train image with probability P by one of the ten corruptions at
a severity drawn from 1..S (data.corruptions.max_severity); --robust lists them (default 0.5:3).

Rows: one per run (recipe, robust, seed): the clean scores and the mean relative drop of each
(percent; rsjax/evaluation/robustness.py). Summary rows per recipe: the mean over seeds of each
variant, `drop_cut` = 1 - robust drop / plain drop (the target is >= 1/3) and the clean score's
change against the plain runs' seed spread (max - min).

  .venv/bin/python benchmarks/robustness.py [--recipes rsscn7,demo] [--seeds 0,1]
      [--rsscn7-steps 300] [--demo-steps 400] [--robust 0.5:3,0.8:5] [--workdir runs/robustness]

Finished runs under --workdir are reused (eval_full.json with a robustness block). Every train /
eval takes /tmp/rsjax_heavy.lock, so that it does not share the CPU with another heavy run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import REPO, markdown_table, report, rsjax  # noqa: E402

# The score whose drop the target is judged on: mR for captions, zero-shot accuracy for labels.
PRIMARY = {"rsscn7": "zero_shot_top1", "demo": "mR"}


def recipe_args(recipe: str, robust: float, steps: int, seed: int, top: int
                ) -> tuple[list[str], str]:
  """(config args for train and eval, eval split) of one run; top: the highest train severity."""
  if recipe == "rsscn7":
    spec = os.path.join(REPO, "configs", "rsscn7_scratch.py") + f":steps={steps}"
    if robust:
      spec += f",robust={robust},robust_max={top}"
    return ["--config", spec, "--set", f"train.seed={seed}"], "val"
  if recipe == "demo":
    args = ["--config", os.path.join(REPO, "configs", "smoke.py"), "--set", f"train.steps={steps}",
            "--set", f"train.seed={seed}"]
    if robust:
      args += ["--set", f"data.corruptions.probability={robust}",
               "--set", f"data.corruptions.max_severity={top}"]
    return args, "test"
  raise SystemExit(f"--recipes: unknown recipe {recipe!r} (use rsscn7, demo)")


def run(recipe: str, robust: float, steps: int, seed: int, top: int, workdir: str) -> dict:
  """Train (unless checkpointed) and evaluate with --robustness (unless done); the split's
  robustness block of eval_full.json."""
  args, split = recipe_args(recipe, robust, steps, seed, top)
  full_path = os.path.join(workdir, "eval_full.json")
  if os.path.exists(full_path):
    with open(full_path) as f:
      found = json.load(f)["splits"].get(split, {})
    if "robustness" in found:
      return found["robustness"]
  if not os.path.exists(os.path.join(workdir, "eval.json")):
    rsjax("train", *args, "--workdir", workdir)
  rsjax("eval", *args, "--workdir", workdir, "--splits", split, "--robustness")
  with open(full_path) as f:
    return json.load(f)["splits"][split]["robustness"]


def row(recipe: str, robust: str, seed: int, result: dict) -> dict:
  out = {"recipe": recipe, "robust": robust, "seed": seed}
  out.update({f"clean_{k}": v for k, v in result["clean"].items()})
  out.update({f"drop_{k}": v for k, v in result["mean_drop"].items()})
  return out


def summarize(rows: list[dict]) -> list[dict]:
  """Per recipe and variant the seed mean; per recipe the drop cut and the clean change."""
  out = []
  for recipe in dict.fromkeys(r["recipe"] for r in rows):
    key = PRIMARY[recipe]
    means = {}
    for robust in dict.fromkeys(r["robust"] for r in rows if r["recipe"] == recipe):
      mine = [r for r in rows if r["recipe"] == recipe and r["robust"] == robust]
      columns = [c for c in mine[0] if c.startswith(("clean_", "drop_"))]
      means[robust] = {c: sum(r[c] for r in mine) / len(mine) for c in columns}
      spread = max(r[f"clean_{key}"] for r in mine) - min(r[f"clean_{key}"] for r in mine)
      out.append({"recipe": recipe, "robust": robust, "seed": "mean", **means[robust],
                  f"clean_{key}_spread": spread})
    plain = means.get("off")
    for robust, m in means.items():
      if robust != "off" and plain:
        out.append({"recipe": recipe, "robust": robust, "seed": "vs plain", "score": key,
                    "drop_cut": 1.0 - m[f"drop_{key}"] / plain[f"drop_{key}"],
                    "clean_change": m[f"clean_{key}"] - plain[f"clean_{key}"]})
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default=os.path.join(REPO, "runs", "robustness"))
  p.add_argument("--recipes", default="rsscn7,demo")
  p.add_argument("--seeds", default="0,1")
  p.add_argument("--rsscn7-steps", type=int, default=300)
  p.add_argument("--demo-steps", type=int, default=400)
  p.add_argument("--robust", default="0.5:3",
                 help="robust variants P:S, comma-separated (probability, highest severity)")
  args = p.parse_args()
  steps = {"rsscn7": args.rsscn7_steps, "demo": args.demo_steps}
  rows = []
  for recipe in args.recipes.split(","):
    variants = [(0.0, 3)] + [(float(v.split(":")[0]), int(v.split(":")[1]))
                             for v in args.robust.split(",")]
    for robust, top in variants:
      # The variant's name: "off", or P with the top severity if not 3 ("p0.5", "p0.8_top5").
      variant = "off" if not robust else f"p{robust:g}" + (f"_top{top}" if top != 3 else "")
      for seed in (int(s) for s in args.seeds.split(",")):
        name = f"{recipe}_{steps.get(recipe)}_{variant}_s{seed}".replace("_off_", "_p0_")
        result = run(recipe, robust, steps.get(recipe, 0), seed, top,
                     os.path.join(args.workdir, name))
        rows.append(row(recipe, variant, seed, result))
        print(markdown_table(rows[-1:]), flush=True)
  summary = summarize(rows)
  print(markdown_table(summary), flush=True)
  path = report(rows, __file__, meta={"summary": summary, "steps": steps,
                                      "robust": args.robust})
  print(f"wrote {path}", flush=True)


if __name__ == "__main__":
  main()
