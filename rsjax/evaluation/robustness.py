"""Retrieval under the shifts of real archives: every corruption of rsjax/data/corruptions.py at
each severity applied to a split's images, re-encoded against the split's unchanged captions.

Scores per (corruption, severity): mR of the recalls, and with a hashing head mAP@20 of the codes
(relevance by pairing, both directions). The relative drop of a score is
(clean - corrupted) / clean in percent; a corruption's drop is the mean over its severities and
the mean relative drop is the mean over corruptions (ImageNet-C's mCE taken relative to the
model's own clean score instead of AlexNet's errors, since no reference model exists here).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from rsjax.console import log
from rsjax.data import corruptions
from rsjax.errors import InputError
from rsjax.evaluation import hashing, recalls

NAME = "robustness"


def _with_images(ctx, images: np.ndarray):
  """ctx on the same split with other images [M, H, W, 3]; the captions' embeddings and codes
  are the clean context's (the text side is not corrupted), so only the images are encoded."""
  shifted = dataclasses.replace(ctx, split=dataclasses.replace(ctx.split, images=images))
  encodings, clean = shifted.encodings, ctx.encodings
  encodings.__dict__["text_emb"] = clean.text_emb
  if clean.bits:
    encodings.__dict__["text_signs"] = clean.text_signs
  return shifted


def scores(ctx) -> dict[str, float]:
  """{"mR": ..., and with hash codes "hash_i2t_map@20", "hash_t2i_map@20"} of ctx's split."""
  out = {"mR": float(recalls.evaluate(ctx)["mR"])}
  enc = ctx.encodings
  if enc.bits:
    pairing = hashing.evaluate_hashing(enc.image_signs, enc.text_signs,
                                       ctx.split.text_to_image)["pairing"]
    out.update({f"hash_{d}_map@20": float(pairing[d]["map@20"]) for d in ("i2t", "t2i")})
  return out


def relative_drop(clean: float, corrupted: float) -> float:
  """Percent of the clean score lost (0 when the clean score is 0: nothing to lose)."""
  return 100.0 * (clean - corrupted) / clean if clean else 0.0


def evaluate(ctx, names=corruptions.NAMES, severities=corruptions.SEVERITIES, seed: int = 0) -> dict:
  """{"clean": scores, "seed", "scores": {corruption: {severity: scores}},
      "drop": {corruption: {score: mean relative drop}}, "mean_drop": {score: ...}}."""
  names = corruptions.check_names(names)
  bad = [s for s in severities if s not in corruptions.SEVERITIES]
  if bad:
    raise InputError(f"--robustness-severities: {bad} outside 1..5")
  clean = scores(ctx)
  result = {"clean": clean, "seed": seed, "severities": list(severities), "scores": {}, "drop": {}}
  started = time.perf_counter()
  for i, name in enumerate(names, 1):
    per = {}
    for severity in severities:
      images = corruptions.corrupt_images(ctx.split.images, name, severity, seed)
      per[str(severity)] = scores(_with_images(ctx, images))
    result["scores"][name] = per
    result["drop"][name] = {k: float(np.mean([relative_drop(v, s[k]) for s in per.values()]))
                            for k, v in clean.items()}
    log(f"{ctx.split_name}, robustness {i}/{len(names)}: {name}, mR "
        + " ".join(f"{per[str(s)]['mR']:.2f}" for s in severities)
        + f" (clean {clean['mR']:.2f}; {time.perf_counter() - started:.0f} s)")
  result["mean_drop"] = {k: float(np.mean([d[k] for d in result["drop"].values()]))
                         for k in clean}
  return result


def table(result: dict) -> str:
  """Markdown: a row per corruption, mR per severity and the relative drop of each score."""
  severities = result["severities"]
  keys = list(result["clean"])
  lines = ["| corruption | " + " | ".join(f"mR s{s}" for s in severities) + " | "
           + " | ".join(f"drop {k} %" for k in keys) + " |",
           "|---" * (1 + len(severities) + len(keys)) + "|",
           "| clean | " + " | ".join(f"{result['clean']['mR']:.2f}" for _ in severities) + " | "
           + " | ".join("0.00" for _ in keys) + " |"]
  for name, per in result["scores"].items():
    lines.append(f"| {name} | " + " | ".join(f"{per[str(s)]['mR']:.2f}" for s in severities)
                 + " | " + " | ".join(f"{result['drop'][name][k]:.2f}" for k in keys) + " |")
  lines.append("| **mean** | " + " | ".join("" for _ in severities) + " | "
               + " | ".join(f"{result['mean_drop'][k]:.2f}" for k in keys) + " |")
  return "\n".join(lines)
