"""Change retrieval on RS-Synth's temporal splits: the change encoder against its two baselines.

Three variants of configs/rs_synth_change.py, each trained with the same trunk, steps, batch and
seed (the `fusion` argument): "pair" (fusion=tokens: both dates' patch tokens and their
differences under joint attention), "late_fusion" (the difference of the two dates' global
embeddings) and "second_image" (the after image alone). Each is then evaluated on the test split
(1,000 pairs, half of them unchanged) by the `change` evaluator: change-retrieval mR by caption
text over changed and over unchanged pairs, no-change detection accuracy, BLEU-4 / CIDEr-D of each
pair's top-ranked caption. Targets: the pair's mR on changed pairs at least 3x second_image's and
1.5x late_fusion's, its no-change accuracy at least 90%, its training within 15 minutes.

Rows: one per variant (`variant`, `mR_changed`, `mR_unchanged`, `mR_all`, `no_change_acc`,
`bleu4`, `cider_d`, `wall_s`: the `rsjax train` command's wall clock, `steps`, `batch`); then
the ratios per step count. Finished runs under --workdir are reused. Every train / eval takes
/tmp/rsjax_heavy.lock, so that it does not share the CPU with another heavy run.

  .venv/bin/python benchmarks/change_retrieval.py [--steps 1000[,1500]] [--seed 0]
      [--variants pair,late_fusion,second_image] [--workdir runs/change_retrieval]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import REPO, markdown_table, report, train_and_evaluate  # noqa: E402

FUSION = {"pair": "tokens", "late_fusion": "late_fusion", "second_image": "second_image"}


def run(variant: str, steps: int, seed: int, workdir: str) -> dict:
  """Train (unless done) and evaluate the test split (unless done); the variant's row."""
  config = os.path.join(REPO, "configs", "rs_synth_change.py") + \
      f":fusion={FUSION[variant]},steps={steps}"
  args = ["--config", config, "--set", f"train.seed={seed}"]
  full, wall = train_and_evaluate(args, workdir, ["test"])
  change = full["splits"]["test"]["change"]
  from rsjax.config import load_config
  batch = load_config(config, []).train.batch_size
  r = change["recalls"]
  caps = change.get("captioning", {}).get("all", {})
  return {"variant": variant, "mR_changed": r["changed"]["mR"], "mR_unchanged": r["unchanged"]["mR"],
          "mR_all": r["all"]["mR"], "no_change_acc": change["detection"]["accuracy"],
          "bleu4": caps.get("bleu4"), "cider_d": caps.get("cider_d"),
          "wall_s": wall, "steps": steps, "batch": batch, "seed": seed}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default=os.path.join(REPO, "runs", "change_retrieval"))
  p.add_argument("--variants", default="pair,late_fusion,second_image")
  p.add_argument("--steps", default="1000", help="training steps, comma-separated")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  rows, ratios = [], {}
  for steps in (int(n) for n in args.steps.split(",")):
    for variant in args.variants.split(","):
      if variant not in FUSION:
        raise SystemExit(f"--variants: unknown {variant!r} (use {', '.join(FUSION)})")
      rows.append(run(variant, steps, args.seed,
                      os.path.join(args.workdir, f"{variant}_{steps}_s{args.seed}")))
      print(markdown_table(rows[-1:]), flush=True)
    by = {r["variant"]: r for r in rows if r["steps"] == steps}
    for base in ("second_image", "late_fusion"):
      if "pair" in by and base in by and by[base]["mR_changed"] > 0:
        ratios[f"pair_vs_{base}_{steps}"] = by["pair"]["mR_changed"] / by[base]["mR_changed"]
  print("ratios of mR on changed pairs: " + json.dumps({k: round(v, 2) for k, v in ratios.items()}))
  path = report(rows, __file__, meta={"ratios": ratios, "seed": args.seed})
  print(f"wrote {path}", flush=True)


if __name__ == "__main__":
  main()
