"""The data iterator's position as a checkpoint item: one file per process, as grain writes it,
restorable onto another process count.

grain's handler reads back only the file of the same process index *and count*, so a checkpoint of
a 2-process run cannot resume in 1 or 4 processes. rsjax's pipelines take every process's share
of each global batch at the same position of the same shuffled stream (rsjax/data/pipeline.py),
so all processes save the same state; that shared state fits any process count that keeps the
global batch. Where the saved states differ, the position cannot be split anew and the restore is
refused with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import grain
import orbax.checkpoint as ocp
from grain._src.core import sharding  # the process index/count grain's own handler writes under

_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json")


class IteratorPositionError(ValueError):
  """The saved iterator states cannot be restored onto this process count."""


class IteratorHandler(grain.checkpoint.CheckpointHandler):
  """grain's handler, with a restore that falls back to the shared state of another count."""

  def restore(self, directory, item=None, args=None):
    item = item or args.item
    index, count = sharding.get_process_index_and_count()
    if (directory / f"process_{index}-of-{count}.json").exists():
      return super().restore(directory, item=item)
    saved = {}  # process index -> (count it was written with, state)
    for path in directory.iterdir():
      match = _FILE.fullmatch(path.name)
      if match:
        saved[int(match.group(1))] = (int(match.group(2)), json.loads(path.read_text()))
    if not saved:
      raise IteratorPositionError(f"{directory} holds no data-iterator state")
    written_by = {c for c, _ in saved.values()}
    first = next(iter(saved.values()))[1]
    if len(written_by) != 1 or len(saved) != min(written_by) or any(
        state != first for _, state in saved.values()):
      raise IteratorPositionError(
          f"{directory}: the data-iterator states of the {len(saved)} process(es) that wrote "
          f"this checkpoint differ, so the position cannot be split over {count} process(es); "
          f"resume with {min(written_by)} process(es)")
    item.set_state(first)
    item.start_prefetch()
    return item


@ocp.args.register_with_handler(IteratorHandler, for_save=True)
@dataclasses.dataclass
class IteratorSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(IteratorHandler, for_restore=True)
@dataclasses.dataclass
class IteratorRestore(ocp.args.CheckpointArgs):
  item: Any
