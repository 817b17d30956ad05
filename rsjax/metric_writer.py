"""Metrics as data: JSON lines that reports are made from, and the same rows as TensorBoard
scalars (rsjax/tensorboard.py).

Only process 0 writes, so a multi-host run records each row once.
"""

from __future__ import annotations

import json
import os

import jax

from rsjax import atomic
from rsjax.tensorboard import EventWriter


class MetricWriter:
  """Appends rows to a .jsonl file and to TensorBoard event files in the same folder. On resume,
  rows past the restored step (written by the interrupted run after its last checkpoint) are
  dropped so the file matches the state, and the event files are purged from there alike."""

  def __init__(self, path: str, resume_step: int = 0, events: bool = True):
    self.path = path
    self.active = jax.process_index() == 0
    if self.active and os.path.exists(path):
      with open(path) as f:
        rows = [line for line in f if line.strip()]
      kept = [r for r in rows if json.loads(r).get("step", 0) <= resume_step]
      if len(kept) != len(rows):
        atomic.write_text(path, "".join(kept))
    self.events = EventWriter(os.path.dirname(os.path.abspath(path)),
                              purge_step=resume_step + 1 if resume_step else None) \
        if events else None

  def write(self, row: dict) -> None:
    if self.active:
      with open(self.path, "a") as f:
        f.write(json.dumps(row) + "\n")
      if self.events is not None:
        self.events.scalars(int(row.get("step", 0)), {k: v for k, v in row.items() if k != "step"})

  def flush(self) -> None:
    if self.events is not None:
      self.events.flush()

  def close(self) -> None:
    if self.events is not None:
      self.events.close()
