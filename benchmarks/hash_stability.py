"""Hash codes across seeds on RSSCN7: configs/rsscn7_scratch.py as it trains in one stage
("before") and with its second stage that learns the codes on the trained, frozen towers
("after", the config's `codes=RUN` argument), three seeds each, val split.

Every row gives image->image and text->image Hamming mAP@20 at 16, 32 and 64 bits (the leading
bits of the 64-bit code; relevance = same class, DUCH split of the val images: 20% queries, 80%
retrieval set; text queries are the class-prompt captions of the query images) and the dense
image->image mAP@20 beside them, in percent. The summary rows give the mean and the spread
(max - min) of each column per variant.

The "after" recipe's first stage is the "before" run of the same seed (the same config and seed),
so the dense embeddings of the two variants are the same model; only the codes differ.

  .venv/bin/python benchmarks/hash_stability.py [--workdir runs/hash_stability] [--seeds 0,1,2]
      [--steps 1200] [--variants before,after]

Runs already finished under --workdir (eval_full.json present) are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import markdown_table, report  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "rsscn7_scratch.py")
BITS = (16, 32, 64)
COLUMNS = ([f"i2i_map20_{b}" for b in BITS] + [f"t2i_map20_{b}" for b in BITS]
           + ["dense_i2i_map20"])


def rsjax(*args: str) -> None:
  cmd = [os.path.join(os.path.dirname(sys.executable), "rsjax"), *args]
  print("$ " + " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True)


def train_and_eval(arg: str, workdir: str, seed: int) -> dict:
  """`rsjax train` (unless its eval.json is there), then the val metrics: from eval.json when the
  run evaluated labels and hashing itself, else from `rsjax eval` on val (eval_full.json)."""
  spec = f"{CONFIG}:{arg}" if arg else CONFIG
  if not os.path.exists(os.path.join(workdir, "eval.json")):
    rsjax("train", "--config", spec, "--workdir", workdir, "--set", f"train.seed={seed}")
  with open(os.path.join(workdir, "eval.json")) as f:
    trained = json.load(f)
  if "hashing" in trained and "labels" in trained:
    return trained
  result = os.path.join(workdir, "eval_full.json")
  if not os.path.exists(result):  # a run from before the config listed the hashing evaluator
    rsjax("eval", "--config", spec, "--workdir", workdir, "--set", f"train.seed={seed}",
          "--splits", "val")
  with open(result) as f:
    return json.load(f)["splits"]["val"]


def row(variant: str, seed: int, val: dict) -> dict:
  """One table row from a run's val metrics (its labels and hashing evaluators)."""
  labels, hashing = val["labels"], val["hashing"]
  out = {"variant": variant, "seed": seed}
  for b in BITS:
    out[f"i2i_map20_{b}"] = labels[f"i2i_map@20_{b}bit"]
  for b in BITS:
    by_label = hashing["prefix"].get(str(b)) if b < hashing["bits"] else None
    out[f"t2i_map20_{b}"] = by_label["t2i"] if by_label else hashing["label"]["t2i"]["map@20"]
  out["dense_i2i_map20"] = labels["i2i_map@20_dense"]
  diag = hashing.get("diagnostics", {}).get("image")
  if diag:  # what the codes look like (docs/evaluation.md): 16-bit prefix and whole code
    out["dead_16"] = diag["dead_bits"]["16"]
    out["dead_64"] = diag["dead_bits"]["64"]
    out["corr_16"] = diag["correlation"]["16"]
    out["corr_64"] = diag["correlation"]["64"]
    out["saturated"] = diag["saturated"]
  return out


def summarize(rows: list[dict]) -> list[dict]:
  """Mean and spread (max - min) of every column per variant."""
  out = []
  for variant in dict.fromkeys(r["variant"] for r in rows):
    mine = [r for r in rows if r["variant"] == variant]
    for stat, fn in (("mean", lambda v: sum(v) / len(v)), ("spread", lambda v: max(v) - min(v))):
      out.append({"variant": variant, "seed": stat,
                  **{c: fn([r[c] for r in mine]) for c in COLUMNS}})
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default=os.path.join(REPO, "runs", "hash_stability"))
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--steps", type=int, default=1200, help="stage-1 train steps (the recipe: 1200)")
  p.add_argument("--variants", default="before,after")
  args = p.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  variants = args.variants.split(",")
  rows = []
  for variant in variants:
    for seed in seeds:
      steps = "" if args.steps == 1200 else f"steps={args.steps}"
      before = os.path.join(args.workdir, f"before_s{seed}" + (f"_{args.steps}" if steps else ""))
      if variant == "before":
        val = train_and_eval(steps, before, seed)
      elif variant == "after":
        train_and_eval(steps, before, seed)  # stage 1: the before run of this seed
        arg = ",".join(a for a in (steps, f"codes={before}") if a)
        val = train_and_eval(arg, before.replace("before_", "after_"), seed)
      else:
        raise SystemExit(f"--variants: unknown {variant!r} (use before, after)")
      rows.append(row(variant, seed, val))
  summary = summarize(rows)
  print(markdown_table(summary), flush=True)
  path = report(rows, __file__, meta={"summary": summary, "stage1_steps": args.steps,
                                      "config": os.path.relpath(CONFIG, REPO)})
  print(f"wrote {path}", flush=True)


if __name__ == "__main__":
  main()
