"""Metrics as data: JSON lines that reports are made from, plus human progress output.

Only process 0 writes or prints, so a multi-host run logs once.
"""

from __future__ import annotations

import json
import os
import time

import jax

_START = time.perf_counter()


def log(message: str) -> None:
  """Prints a progress line with the elapsed wall time (process 0 only)."""
  if jax.process_index() == 0:
    print(f"[rsjax {time.perf_counter() - _START:7.1f}s] {message}", flush=True)


class MetricWriter:
  """Appends rows to a .jsonl file. On resume, rows past the restored step (written by the
  interrupted run after its last checkpoint) are dropped so the file matches the state."""

  def __init__(self, path: str, resume_step: int = 0):
    self.path = path
    self.active = jax.process_index() == 0
    if self.active and os.path.exists(path):
      with open(path) as f:
        rows = [line for line in f if line.strip()]
      kept = [r for r in rows if json.loads(r).get("step", 0) <= resume_step]
      if len(kept) != len(rows):
        with open(path + ".tmp", "w") as f:
          f.writelines(kept)
        os.replace(path + ".tmp", path)

  def write(self, row: dict) -> None:
    if self.active:
      with open(self.path, "a") as f:
        f.write(json.dumps(row) + "\n")
