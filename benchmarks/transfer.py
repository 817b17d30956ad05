"""Transfer from a pretrained dual encoder: full fine-tuning against a locked image tower (LiT),
LoRA and a bottleneck adapter, each at equal steps, on the RSICD samples and the RSSCN7 val
protocol (configs/transfer.py).

The pretrained model is a stand-in trained here (no CLIP weights can be downloaded on these
machines): the demo's dual encoder on RS-Synth's train split plus the RSSCN7 train split, written
by this script as one captions.jsonl folder (RS-Synth images as PNG files, RSSCN7 images linked,
each RSSCN7 image captioned with the class prompts of configs/rsscn7_scratch.py).

For every variant the table gives the trained and total parameter counts, the optimizer state's
size (Adam's two moments of the trained parameters), the median step time from metrics.jsonl and
the metrics of the adapted model; the pretrained model's own scores are the "pretrained" rows.

  .venv/bin/python benchmarks/transfer.py [--workdir runs/transfer] [--pretrain-steps 1000]
      [--rsicd-steps 100] [--rsscn7-steps 300] [--variants full,lock_image,lora,adapter]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import report  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "transfer.py")
VARIANTS = ("full", "lock_image", "lora", "adapter")


def shared_data() -> str:
  return os.environ.get("RSJAX_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))


def write_mixture(folder: str, synth_test: int = 500) -> str:
  """RS-Synth train (+ a test split of `synth_test` images) and the RSSCN7 train split as one
  captions.jsonl folder; written once (the file appears last)."""
  from PIL import Image

  from rsjax.config import config_module
  from rsjax.data import rs_synth

  index = os.path.join(folder, "captions.jsonl")
  if os.path.exists(index):
    return folder
  os.makedirs(os.path.join(folder, "synth"), exist_ok=True)
  splits = rs_synth.load_or_generate(rs_synth.SynthSpec(), None, progress=True)
  rows = []
  for split, limit in (("train", None), ("test", synth_test)):
    images, records = splits[split]
    for i, (image, record) in enumerate(zip(images[:limit], records[:limit])):
      name = f"synth/{split}_{i:05d}.png"
      Image.fromarray(image).save(os.path.join(folder, name))
      rows.append({"image": name, "split": split, "captions": list(record["captions"])})
  rsscn7 = os.path.join(shared_data(), "rsscn7")
  link = os.path.join(folder, "rsscn7")
  if not os.path.islink(link):
    os.symlink(os.path.abspath(rsscn7), link)
  templates = config_module("rsscn7_scratch.py", CONFIG).TEMPLATES
  with open(os.path.join(rsscn7, "captions.jsonl")) as f:
    for row in map(json.loads, f):
      if row["split"] == "train":
        rows.append({"image": f"rsscn7/{row['image']}", "split": "train",
                     "captions": [t.format(label=row["label"]) for t in templates[:5]]})
  with open(index + ".tmp", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  os.rename(index + ".tmp", index)
  print(f"mixture: {len(rows)} images in {folder}", flush=True)
  return folder


def train(arg: str, workdir: str, sets: tuple[str, ...] = ()) -> float:
  """`rsjax train --config configs/transfer.py:ARG`; returns its wall time in seconds."""
  timing = os.path.join(workdir, "bench_wall_s.txt")
  if os.path.exists(os.path.join(workdir, "eval.json")) and os.path.exists(timing):
    with open(timing) as f:  # done by an earlier call of this script
      return float(f.read())
  cmd = [os.path.join(os.path.dirname(sys.executable), "rsjax"), "train",
         "--config", f"{CONFIG}:{arg}", "--workdir", workdir]
  for item in sets:
    cmd += ["--set", item]
  print("$ " + " ".join(cmd), flush=True)
  start = time.perf_counter()
  subprocess.run(cmd, check=True)
  wall = time.perf_counter() - start
  with open(timing, "w") as f:
    f.write(f"{wall:.1f}")
  return wall


def accounting(arg: str, sets: tuple[str, ...] = ()) -> dict:
  """Trained / total parameters and the optimizer state's bytes, from the state's layout."""
  import jax

  from rsjax import optim, parallel, state
  from rsjax.config import load_config

  config = load_config(f"{CONFIG}:{arg}", sets)
  mesh = parallel.make_mesh(config)
  model = state.create_model(config)
  every, _ = state.params_layout(model, config, mesh)
  abstract, _ = state.state_layout(model, optim.make_optimizer(config.train), config, mesh)
  size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  trained = size(abstract.params)
  return {"trained_params": trained, "total_params": size(every),
          "trained_pct": 100.0 * trained / size(every),
          "opt_state_mib": sum(x.size * x.dtype.itemsize
                               for x in jax.tree.leaves(abstract.opt_state)) / 2**20}


def step_ms(workdir: str, batch: int) -> float:
  """Median step time from metrics.jsonl's images/s (compilation excluded by the trainer)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rates = [r["images_per_s"] for r in map(json.loads, f) if "images_per_s" in r]
  rates = rates[1:] or rates  # the first interval follows compilation
  return 1000.0 * batch / statistics.median(rates)


def metrics(workdir: str, stage: str) -> dict:
  with open(os.path.join(workdir, "eval.json")) as f:
    ev = json.load(f)
  row = {"mR": ev["mR"]}
  if stage == "rsscn7":
    labels = ev["labels"]
    row.update(zero_shot_top1=labels["zero_shot_top1"], t2i_map=labels["t2i_map"],
               i2i_map20=labels["i2i_map@20_dense"])
  return row


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default=os.path.join(REPO, "runs", "transfer"))
  p.add_argument("--pretrain-steps", type=int, default=1000)
  p.add_argument("--rsicd-steps", type=int, default=100)
  p.add_argument("--rsscn7-steps", type=int, default=300)
  p.add_argument("--variants", default=",".join(VARIANTS))
  args = p.parse_args()
  mix = write_mixture(os.path.join(args.workdir, "mixture"))
  pretrained = os.path.join(args.workdir, "pretrain")
  wall = train(f"stage=pretrain,mix={mix},steps={args.pretrain_steps}", pretrained)
  print(f"pretraining: {wall:.0f} s", flush=True)
  rows = []
  for stage, steps, batch in (("rsicd", args.rsicd_steps, 32), ("rsscn7", args.rsscn7_steps, 64)):
    # The pretrained model itself on the target (0 steps: the step-0 evaluation is the result).
    base_arg = f"stage={stage},peft=full,init={pretrained},steps=0"
    base_dir = os.path.join(args.workdir, f"{stage}_pretrained")
    base_sets = ("train.warmup_steps=0",)
    train(base_arg, base_dir, base_sets)
    rows.append({"target": stage, "variant": "pretrained", "steps": 0,
                 **accounting(base_arg, base_sets),
                 "step_ms": None, **metrics(base_dir, stage)})
    for variant in args.variants.split(","):
      arg = f"stage={stage},peft={variant},init={pretrained},steps={steps}"
      workdir = os.path.join(args.workdir, f"{stage}_{variant}")
      wall = train(arg, workdir)
      rows.append({"target": stage, "variant": variant, "steps": steps, **accounting(arg),
                   "step_ms": step_ms(workdir, batch), **metrics(workdir, stage), "wall_s": wall})
  report(rows, __file__, meta={"pretrain_steps": args.pretrain_steps, "config": "configs/transfer.py"})


if __name__ == "__main__":
  main()
