"""`rsjax eval`: retrieval (per subset), hashing and zero-shot evaluation of a run's checkpoint.

Writes WORKDIR/eval_full.json (and eval_full_step<N>.json) with every result, and
WORKDIR/eval_gallery.npz (text queries with their top images) for `rsjax report`.
"""

from __future__ import annotations

import os

from rsjax.commands.common import add_config_args, load_config_or_exit
from rsjax.errors import InputError


def default_splits(config, available: list[str]) -> list[str]:
  """The config's eval split first, then every extra subset (RS-Synth challenges); not val/train."""
  main = config.eval.split
  return [main] + [s for s in available if s not in (main, "val", "train")]


def hashing_table(results: dict) -> str:
  keys = ["map@20", "map@100", "map@all", "p@20", "p@100", "p_r2"]
  lines = ["| split | relevance | direction | " + " | ".join(keys) + " |",
           "|---" * (len(keys) + 3) + "|"]
  for split, r in results.items():
    for relevance in ("pairing", "label"):
      for direction in ("i2t", "t2i"):
        m = r.get("hashing", {}).get(relevance, {}).get(direction)
        if m:
          lines.append(f"| {split} | {relevance} | {direction} | "
                       + " | ".join(f"{m[k]:.2f}" for k in keys) + " |")
  return "\n".join(lines)


def split_evaluators(configured: tuple[str, ...], first: bool) -> tuple[str, ...]:
  """What `rsjax eval` runs on each split: recalls, hashing (a model with a hashing head), the
  config's checked eval.evaluators (e.g. labels), and the report's gallery on the first split."""
  names = ["retrieval", "hashing", *configured]
  if first:
    names.append("gallery")
  return tuple(dict.fromkeys(names))


def robustness_args(args) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """The corruptions and severities of --robustness, checked before any model is loaded."""
  from rsjax.data import corruptions

  names = tuple(n.strip() for n in args.robustness_corruptions.split(",") if n.strip())
  text = [s.strip() for s in args.robustness_severities.split(",") if s.strip()]
  if any(not s.isdigit() or int(s) not in corruptions.SEVERITIES for s in text):
    raise InputError(f"--robustness-severities: {args.robustness_severities!r}; give severities "
                     "from 1 to 5, comma-separated")
  return (corruptions.check_names(names) or corruptions.NAMES,
          tuple(int(s) for s in text) or corruptions.SEVERITIES)


def run(args) -> int:
  config = load_config_or_exit(args, needs_data=True)
  shifts = robustness_args(args) if args.robustness else None
  import jax
  import numpy as np

  from rsjax import atomic, parallel, runs, search_inputs, tensorboard
  from rsjax.console import log
  from rsjax.data.datasets import load_retrieval_data
  from rsjax.evaluation import hash_diagnostics, hashing, labels, registry, zero_shot
  from rsjax.evaluation.recalls import format_table

  workdir = os.path.abspath(args.workdir)
  parallel.initialize_distributed()  # a multi-host launch: every process joins, process 0 writes
  mesh = parallel.make_mesh(config)
  configured = registry.config_evaluators(config)  # ConfigError naming eval.evaluators
  model, params, step = runs.load_model(config, args.checkpoint or workdir, mesh)
  data = load_retrieval_data(config, workdir)
  splits = args.splits.split(",") if args.splits else default_splits(config, list(data.eval_splits))
  unknown = [s for s in splits if s not in data.eval_splits]
  if unknown:
    raise InputError(f"--splits: unknown split(s) {unknown}; this data set has "
                     f"{sorted(data.eval_splits)}")
  results = {"step": step, "splits": {}, "zero_shot": {}}
  gallery = None
  for i, name in enumerate(splits):
    ctx = registry.context(model, params, data, name, config, mesh)
    found = registry.evaluate_split(ctx, split_evaluators(configured, i == 0), required=False)
    gallery = found.pop("gallery", gallery)
    out = {"retrieval": found.pop("retrieval"), "num_images": int(len(ctx.split.images)),
           "num_captions": int(len(ctx.split.tokens)), **found}
    if labels.NAME in out:
      log(f"{name}, {labels.summary(out[labels.NAME])}")
    diag = out.get(hashing.NAME, {}).get("diagnostics")
    if diag:  # what a user tuning short codes looks at (docs/evaluation.md)
      log(f"{name}, hash codes per prefix (|bit mean|: 0 = balanced; |corr|: mean over bit pairs; "
          f"dead: |bit mean| > {hash_diagnostics.DEAD_BALANCE}; saturated: |tanh(beta_end z)| > "
          f"{diag['saturation_threshold']}):\n" + hash_diagnostics.summary(diag))
    if args.robustness:  # every corruption x severity: re-encodes the split's images 50 times
      from rsjax.evaluation import robustness  # albumentations takes seconds to import
      out[robustness.NAME] = robustness.evaluate(ctx, out, *shifts, seed=args.robustness_seed)
      log(f"{name}, robustness (mR per severity; mean relative drop of each score, percent):\n"
          + robustness.table(out[robustness.NAME]))
    results["splits"][name] = out
    if i == 0 and not args.no_efficiency:  # the model's costs, measured once on the first split
      from rsjax.evaluation import efficiency
      results["efficiency"] = efficiency.measure(ctx)
      log(efficiency.summary(results["efficiency"]))
  log(f"retrieval at step {step} (percent):\n" + format_table(
      {name: r["retrieval"] for name, r in results["splits"].items()}))
  if config.model.hashing.bits:
    log(f"hashing, {config.model.hashing.bits} bits (percent):\n" + hashing_table(results["splits"]))
  for path in args.zero_shot:
    images, image_labels, names = search_inputs.labelled_images(
        path, config.data.image_size, args.zero_shot_split, args.zero_shot_limit)
    zs = zero_shot.zero_shot(model, params, images, image_labels, names, data.tokenizer,
                             config.model.text.context_length, mesh, config.eval.batch_size,
                             tuple(args.template) if args.template else zero_shot.DEFAULT_TEMPLATES)
    results["zero_shot"][os.path.basename(os.path.normpath(path))] = zs
    log(f"zero-shot {path} ({zs['num_images']} images, {zs['num_classes']} classes): "
        f"top-1 {zs['top1']:.2f}%, mean per class {zs['mean_per_class']:.2f}%")
  if jax.process_index() != 0:
    return 0
  for file_name in (f"eval_full_step{step}.json", "eval_full.json"):
    atomic.write_json(os.path.join(workdir, file_name), results, indent=1)
  tables = {"eval/recalls": format_table({n: r["retrieval"] for n, r in results["splits"].items()})}
  for name, r in results["splits"].items():
    if "robustness" in r:
      from rsjax.evaluation import robustness
      tables[f"eval/robustness/{name}"] = robustness.table(r["robustness"])
  tensorboard.write_eval(workdir, step, {"splits": results["splits"],
                                         "zero_shot": results["zero_shot"]}, tables)
  if gallery is not None:
    with atomic.atomic_file(os.path.join(workdir, "eval_gallery.npz")) as tmp:
      with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a bare name
        np.savez_compressed(f, **gallery)
  log(f"wrote {os.path.join(workdir, 'eval_full.json')}")
  return 0


def register(sub) -> None:
  p = sub.add_parser("eval", help="evaluate a checkpoint: recalls per subset, hashing, zero-shot")
  add_config_args(p)
  p.add_argument("--checkpoint", default=None, help="checkpoints to evaluate (default: WORKDIR's)")
  p.add_argument("--splits", default="",
                 help="comma-separated eval splits (default: eval.split and every challenge subset)")
  p.add_argument("--zero-shot", action="append", default=[], metavar="PATH",
                 help="zero-shot classification on a class-folder tree or a labelled data set "
                      "(e.g. ../shared/data/rsscn7); repeatable")
  p.add_argument("--zero-shot-split", default=None, help="only this split of the zero-shot set")
  p.add_argument("--zero-shot-limit", type=int, default=None, help="at most this many images")
  p.add_argument("--template", action="append", default=[],
                 help="prompt template with {} for the class name (repeatable; default: "
                      "four RS templates)")
  p.add_argument("--robustness", action="store_true",
                 help="also score each split under every image corruption at severities 1..5 "
                      "(rsjax/data/corruptions.py; mR and hash mAP@20, mean relative drop)")
  p.add_argument("--robustness-corruptions", default="", metavar="A,B",
                 help="only these corruptions (default: all ten)")
  p.add_argument("--robustness-severities", default="", metavar="1,3,5",
                 help="only these severities (default: 1,2,3,4,5)")
  p.add_argument("--robustness-seed", type=int, default=0, help="the corruptions' seed (0)")
  p.add_argument("--no-efficiency", action="store_true",
                 help="skip the efficiency figures (parameters, FLOPs, images/s, query latency)")
  p.set_defaults(run=run)
