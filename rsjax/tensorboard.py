"""TensorBoard event files beside metrics.jsonl, through tensorboardX (no TensorFlow needed).

Every row the train loop writes to WORKDIR/metrics.jsonl also goes to WORKDIR/tensorboard/ as
scalars (loss, learning rate, images/s, the loss terms, periodic val recalls), and the final and
`rsjax eval` results go there as scalars under eval/ and tables as text, so that
`tensorboard --logdir runs/` shows every run by its folder name. Only process 0 writes.

On resume the writer starts with tensorboardX's purge_step: TensorBoard then drops the events an
interrupted run wrote past the restored step, as MetricWriter drops those rows of metrics.jsonl.
"""

from __future__ import annotations

import math
import os

import jax

SUBDIR = "tensorboard"


def flat_scalars(tree: dict, prefix: str = "") -> dict[str, float]:
  """{"a": {"b": 1.0}, "c": [..], "d": "x"} -> {"a/b": 1.0}: every finite int or float leaf of
  nested dicts, by its path (lists, strings and non-finite values are left out)."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flat_scalars(value, name + "/"))
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
      out[name] = float(value)
  return out


class EventWriter:
  """Scalars and text for one workdir's event files. purge_step: the first step this writer
  owns (a resumed run's restored step + 1); TensorBoard discards older files' events from there."""

  def __init__(self, workdir: str, purge_step: int | None = None):
    self.active = jax.process_index() == 0
    self._writer = None
    if self.active:
      from tensorboardX import SummaryWriter  # imported here: only process 0 needs it

      self._writer = SummaryWriter(os.path.join(workdir, SUBDIR), purge_step=purge_step,
                                   flush_secs=10)

  def scalars(self, step: int, values: dict, prefix: str = "") -> None:
    if self._writer is not None:
      for name, value in flat_scalars(values, prefix).items():
        self._writer.add_scalar(name, value, step)

  def text(self, step: int, tag: str, markdown: str) -> None:
    if self._writer is not None:
      self._writer.add_text(tag, markdown, step)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def write_eval(workdir: str, step: int, results: dict, tables: dict[str, str] | None = None
               ) -> None:
  """An evaluation's results at `step` (scalars under eval/ by their path in `results`: the
  trainer's eval/test/mR, rsjax eval's eval/splits/test/retrieval/mR) and its markdown tables
  (text under their tag), in workdir's event files."""
  writer = EventWriter(workdir)
  writer.scalars(step, results, "eval/")
  for tag, table in (tables or {}).items():
    writer.text(step, tag, table)
  writer.close()
