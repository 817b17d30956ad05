"""What the train loop watches besides the step: a pre-emption notice, non-finite losses and
failed collectives of a multi-process run."""

from __future__ import annotations

import contextlib
import signal

import numpy as np

from rsjax.console import log
from rsjax.errors import RsjaxError


class PeerLostError(RsjaxError):
  """A collective of a multi-process run failed because another process is gone. The command
  exits at once after the message: orbax's background threads may wait for the lost peer."""
  exit_now = True


def is_collective_failure(error: BaseException) -> bool:
  """Whether `error` (or an error it came from) is a failed collective or coordination call,
  e.g. gloo's "Connection closed by peer" or a barrier that a dead task never reached."""
  import jax

  while error is not None:
    if isinstance(error, jax.errors.JaxRuntimeError) or "Gloo" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def peer_lost(error: Exception, step: int, last_complete: int | None) -> PeerLostError:
  import jax

  first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  kept = (f"the last checkpoint known complete is step {last_complete}"
          if last_complete is not None else "no checkpoint is complete yet")
  return PeerLostError(
      f"step {step}: a collective between the {jax.process_count()} processes failed, so another "
      f"process has probably died ({first}); {kept}; restart all processes with the same command")


@contextlib.contextmanager
def collective_work(watchdog, what: str, step: int, checkpointer, timeout_s: float | None = None):
  """Run a block that needs every process (a step, a checkpoint save) under `watchdog`; in a
  multi-process run a failed collective in it (e.g. gloo's "Connection reset by peer") becomes
  a one-line PeerLostError naming `step` and the last complete checkpoint."""
  import jax

  try:
    with watchdog.watch(what, timeout_s=timeout_s):
      yield
  except Exception as e:
    if jax.process_count() == 1 or not is_collective_failure(e):
      raise
    raise peer_lost(e, step, checkpointer.known_complete_step()) from e


class NonFiniteLossError(RsjaxError, FloatingPointError):
  """The loss became NaN/Inf; the message names the step and the last good checkpoint."""


class PreemptionFlag:
  """Set by SIGTERM (the cloud TPU / SLURM pre-emption notice): the loop checkpoints and exits.

  In a multi-process run the notice may reach one host first (or only one): `agreed()` tells
  every process whether any of them has it, so that all checkpoint the same step and stop."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. a test runner thread): no handler
      self._previous = None
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def agreed(self) -> bool:
    """Whether any process has received SIGTERM; every process must call it at the same step."""
    import jax

    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils  # an all-gather of one flag per process

    return bool(np.any(multihost_utils.process_allgather(np.int32(self.requested))))

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class NonFiniteGuard:
  """train.nonfinite: "stop" raises at the first NaN/Inf loss or gradient norm; "skip" counts the
  step (its update was dropped by optax.apply_if_finite), records it, and raises after more than
  train.max_consecutive_skips in a row. Errors name the step and the last good checkpoint."""

  def __init__(self, t, checkpointer, writer):
    self.skip = t.get("nonfinite", "stop") == "skip"
    self.max_consecutive = t.get("max_consecutive_skips", 10)
    self.ckpt, self.writer = checkpointer, writer
    self.skipped = self.consecutive = 0

  def _last_good(self) -> str:
    return f"The last good checkpoint is step {self.ckpt.latest_step()} in {self.ckpt.directory}"

  def check(self, step: int, loss: float, grad_norm: float) -> None:
    if np.isfinite(loss) and np.isfinite(grad_norm):
      self.consecutive = 0
      return
    what = f"loss {loss}, gradient norm {grad_norm}"
    if not self.skip:
      raise NonFiniteLossError(
          f"non-finite {what} at step {step}; stopping. {self._last_good()} "
          "(train.nonfinite=skip would skip such steps instead)")
    self.skipped, self.consecutive = self.skipped + 1, self.consecutive + 1
    log(f"step {step}: non-finite {what}; update skipped ({self.skipped} skipped so far)")
    self.writer.write({"step": step, "skipped_steps": self.skipped})
    if self.consecutive > self.max_consecutive:
      raise NonFiniteLossError(
          f"{self.consecutive} non-finite steps in a row up to step {step} (more than "
          f"train.max_consecutive_skips={self.max_consecutive}); stopping. {self._last_good()}")
