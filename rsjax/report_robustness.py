"""The report's robustness section: for each split that `rsjax eval --robustness` scored, one
plot (each score against severity, a line per corruption, severity 0 = clean) and the table of
mean relative drops (rsjax/evaluation/robustness.py)."""

from __future__ import annotations

import math

from rsjax.report_figures import png, pyplot

LABELS = {"mR": "mR", "hash_i2t_map@20": "hash i2t mAP@20", "hash_t2i_map@20": "hash t2i mAP@20",
          "zero_shot_top1": "zero-shot top-1", "t2i_map": "class prompt t2i mAP"}


def results(full: dict | None) -> dict[str, dict]:
  """{split: robustness result} of an eval_full.json, in its split order."""
  return {name: r["robustness"] for name, r in ((full or {}).get("splits") or {}).items()
          if "robustness" in r}


def plot(result: dict) -> bytes:
  """One panel per score: the score (percent) against severity, a line per corruption."""
  keys = list(result["clean"])
  cols = min(3, len(keys))
  rows = math.ceil(len(keys) / cols)
  plt = pyplot()
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
  severities = [0] + [int(s) for s in result["severities"]]
  for ax, key in zip(axes.flat, keys):
    for name, per in result["scores"].items():
      ax.plot(severities, [result["clean"][key]] + [per[str(s)][key] for s in severities[1:]],
              marker=".", label=name)
    ax.set_xticks(severities)
    ax.set_xlabel("severity (0: clean)")
    ax.set_ylabel(f"{LABELS.get(key, key)} (%)")
    ax.set_title(f"{LABELS.get(key, key)}: mean drop {result['mean_drop'][key]:.1f}%", fontsize=10)
  for ax in list(axes.flat)[len(keys):]:
    ax.set_visible(False)
  axes.flat[0].legend(fontsize=7, ncol=2)
  return png(fig)


def drop_rows(result: dict) -> tuple[list[str], list[list[str]]]:
  """Header and rows: each corruption's mean relative drop per score, then the mean."""
  keys = list(result["clean"])
  header = ["corruption"] + [f"drop {LABELS.get(k, k)} %" for k in keys]
  rows = [["clean"] + [f"({result['clean'][k]:.2f})" for k in keys]]
  rows += [[name] + [f"{drop[k]:.2f}" for k in keys] for name, drop in result["drop"].items()]
  rows.append(["mean"] + [f"{result['mean_drop'][k]:.2f}" for k in keys])
  return header, rows
