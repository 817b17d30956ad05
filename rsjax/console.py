"""Progress output for people: one timestamped line per event, printed by process 0 only.

Every layer (data loaders, trainer, evaluators, commands) logs through here, so a multi-host run
prints each line once.
"""

from __future__ import annotations

import time

import jax

_START = time.perf_counter()


def log(message: str) -> None:
  """Prints a progress line with the elapsed wall time (process 0 only)."""
  if jax.process_index() == 0:
    print(f"[rsjax {time.perf_counter() - _START:7.1f}s] {message}", flush=True)
