"""Metrics as data: JSON lines that reports are made from.

Only process 0 writes, so a multi-host run records each row once.
"""

from __future__ import annotations

import json
import os

import jax

from rsjax import atomic


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
        atomic.write_text(path, "".join(kept))

  def write(self, row: dict) -> None:
    if self.active:
      with open(self.path, "a") as f:
        f.write(json.dumps(row) + "\n")
