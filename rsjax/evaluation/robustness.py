"""Retrieval under the shifts of real archives: every corruption of rsjax/data/corruptions.py at
each severity applied to a split's images, re-encoded against the split's unchanged captions.

Scores per (corruption, severity), each in percent:
- `mR` of the recalls (caption sets);
- with a hashing head, `hash_i2t_map@20` / `hash_t2i_map@20` of the codes (relevance by pairing);
- on a labelled split (RSSCN7's class prompts; the `labels` evaluator), `zero_shot_top1`, the class
  prompts' text->image `t2i_map`, and `i2i_map@20_<K>bit` of the full codes.
The relative drop of a score is (clean - corrupted) / clean in percent; a corruption's drop is
the mean over its severities and the mean relative drop is the mean over corruptions (ImageNet-C's
mCE taken relative to the model's own clean score instead of AlexNet's errors, since no reference
model exists here).
"""

from __future__ import annotations

import time

import numpy as np

from rsjax.console import log
from rsjax.data import corruptions
from rsjax.evaluation import hashing, labels, recalls

NAME = "robustness"


def pick(results: dict, bits: int) -> dict[str, float]:
  """The robustness scores out of a split's evaluator results ({"retrieval": recalls, "hashing":
  {"pairing": ...}, "labels": label_metrics}; the last two when present)."""
  out = {"mR": float(results["retrieval"]["mR"])}
  pairing = results.get(hashing.NAME, {}).get("pairing")
  if pairing:
    out.update({f"hash_{d}_map@20": float(pairing[d]["map@20"]) for d in ("i2t", "t2i")})
  by_label = results.get(labels.NAME)
  if by_label:
    keys = ["zero_shot_top1", "t2i_map"]
    if bits and f"i2i_map@{labels.I2I_K}_{bits}bit" in by_label:
      keys.append(f"i2i_map@{labels.I2I_K}_{bits}bit")
    out.update({k: float(by_label[k]) for k in keys})
  return out


def corrupted_results(ctx, with_labels: bool) -> dict:
  """The evaluator results that `pick` reads, of ctx's split (only what the scores need: no PR
  curves or code diagnostics)."""
  results = {recalls.NAME: recalls.evaluate(ctx)}
  enc = ctx.encodings
  if enc.bits:
    results[hashing.NAME] = {"pairing": hashing.evaluate_hashing(
        enc.image_signs, enc.text_signs, ctx.split.text_to_image)["pairing"]}
  if with_labels:
    results[labels.NAME] = labels.evaluate(ctx)
  return results


def relative_drop(clean: float, corrupted: float) -> float:
  """Percent of the clean score lost (0 when the clean score is 0: nothing to lose)."""
  return 100.0 * (clean - corrupted) / clean if clean else 0.0


def evaluate(ctx, clean_results: dict, names=corruptions.NAMES,
             severities=corruptions.SEVERITIES, seed: int = 0) -> dict:
  """{"clean": scores, "seed", "severities", "scores": {corruption: {severity: scores}},
      "drop": {corruption: {score: mean relative drop}}, "mean_drop": {score: ...}}.

  clean_results: the split's results from the same model (rsjax eval's retrieval / hashing /
  labels), from which the clean scores are read; names and severities as checked by
  commands/eval.robustness_args (corruptions.corrupt refuses others)."""
  bits = ctx.encodings.bits
  clean = pick(clean_results, bits)
  with_labels = labels.NAME in clean_results
  result = {"clean": clean, "seed": seed, "severities": list(severities), "scores": {}, "drop": {}}
  started = time.perf_counter()
  for i, name in enumerate(names, 1):
    per = {}
    for severity in severities:
      shifted = ctx.with_images(corruptions.corrupt_images(ctx.split.images, name, severity, seed))
      per[str(severity)] = pick(corrupted_results(shifted, with_labels), bits)
    result["scores"][name] = per
    result["drop"][name] = {k: float(np.mean([relative_drop(v, s[k]) for s in per.values()]))
                            for k, v in clean.items()}
    log(f"{ctx.split_name}, robustness {i}/{len(names)}: {name}, mR "
        + " ".join(f"{per[str(s)]['mR']:.2f}" for s in severities)
        + f" (clean {clean['mR']:.2f}; {time.perf_counter() - started:.0f} s)")
  result["mean_drop"] = {k: float(np.mean([d[k] for d in result["drop"].values()]))
                         for k in clean}
  return result


def table(result: dict, score: str = "mR") -> str:
  """Markdown: a row per corruption, `score` per severity and the relative drop of each score."""
  severities = result["severities"]
  keys = list(result["clean"])
  lines = ["| corruption | " + " | ".join(f"{score} s{s}" for s in severities) + " | "
           + " | ".join(f"drop {k} %" for k in keys) + " |",
           "|---" * (1 + len(severities) + len(keys)) + "|",
           "| clean | " + " | ".join(f"{result['clean'][score]:.2f}" for _ in severities) + " | "
           + " | ".join("0.00" for _ in keys) + " |"]
  for name, per in result["scores"].items():
    lines.append(f"| {name} | " + " | ".join(f"{per[str(s)][score]:.2f}" for s in severities)
                 + " | " + " | ".join(f"{result['drop'][name][k]:.2f}" for k in keys) + " |")
  lines.append("| **mean** | " + " | ".join("" for _ in severities) + " | "
               + " | ".join(f"{result['mean_drop'][k]:.2f}" for k in keys) + " |")
  return "\n".join(lines)
