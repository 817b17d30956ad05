"""A step that never ends, stopped: how a multi-process run learns that another process is gone.

When one process of a multi-process run dies (SIGKILL, a lost host), the others wait inside the
next collective for a peer that will not come. JAX's coordination service notices the missing
heartbeats only after `heartbeat_timeout_seconds` and then aborts with a C++ stack trace. The
watchdog bounds the wait and says what happened in one line: armed around each step and each
checkpoint save, it stops the process when one outlives `train.step_timeout_s`.

The watching happens in a small child process, not a thread: a stuck process may hold the GIL
in a blocking call (orbax's background commit waits at a coordination-service barrier), and a
Python thread would then never run. The parent sends "arm" and "disarm" lines through a pipe;
when a deadline passes, the child prints the error on the shared stderr and kills the parent with
SIGKILL (exit status 137 / -9). When the parent exits, the pipe closes and the child ends.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Callable

# The child: reads "ARM seconds message" / "DISARM" lines; kills the parent at a missed deadline.
_CHILD = r"""
import os, select, signal, sys, time
parent, deadline, message = int(sys.argv[1]), None, ""
while True:
  wait = None if deadline is None else max(0.0, deadline - time.monotonic())
  ready, _, _ = select.select([sys.stdin], [], [], wait)
  if ready:
    line = sys.stdin.readline()
    if not line:
      sys.exit(0)
    if line.startswith("ARM "):
      _, seconds, message = line.rstrip("\n").split(" ", 2)
      deadline = time.monotonic() + float(seconds)
    else:
      deadline = None
  elif deadline is not None and time.monotonic() >= deadline:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os.kill(parent, signal.SIGKILL)
    sys.exit(0)
"""


class Watchdog:
  """`with watchdog.watch("step 7"):` around work that must finish within `timeout_s` (0: off).

  `last_checkpoint()` gives the step a restart resumes from, for the message; `who` says which
  process this is (e.g. "process 0 of 2")."""

  def __init__(self, timeout_s: float, last_checkpoint: Callable[[], int | None], who: str = ""):
    self.timeout_s, self.last_checkpoint, self.who = float(timeout_s), last_checkpoint, who
    self._child: subprocess.Popen | None = None

  def _send(self, line: str) -> None:
    if self._child is None:
      self._child = subprocess.Popen([sys.executable, "-S", "-c", _CHILD, str(os.getpid())],
                                     stdin=subprocess.PIPE, text=True, bufsize=1)
    self._child.stdin.write(line + "\n")
    self._child.stdin.flush()

  def _message(self, what: str, seconds: float) -> str:
    last = self.last_checkpoint()
    resume = (f"the last checkpoint known complete is step {last}" if last is not None else
              "no checkpoint is complete yet")
    peers = f" ({self.who}: another process has probably died or hangs)" if self.who else ""
    return (f"rsjax train: error: {what} did not finish within {seconds:g} s{peers}; stopping; "
            f"{resume} (train.step_timeout_s sets the limit)").replace("\n", " ")

  @contextlib.contextmanager
  def watch(self, what: str, timeout_s: float | None = None):
    seconds = self.timeout_s if timeout_s is None else timeout_s
    if seconds <= 0:
      yield
      return
    self._send(f"ARM {seconds} {self._message(what, seconds)}")
    try:
      yield
    finally:
      self._send("DISARM")

  def close(self) -> None:
    if self._child is not None:
      self._child.stdin.close()
      self._child.wait()
      self._child = None
