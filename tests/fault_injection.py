"""Faults injected into a real `rsjax train` process, for the fault-tolerance tests.

Run as `python tests/fault_injection.py FAULT STEP -- <rsjax CLI args>`: it patches one place, then
runs the ordinary CLI entry point. The patch works inside orbax's checkpoint write, after the
parameters of step STEP have been written to the temporary checkpoint directory and before that
directory is renamed into place, i.e. in the middle of the write:

  kill_in_save  the process SIGKILLs itself (a machine lost mid-write)
  disk_full     the write fails with ENOSPC ("No space left on device")
  read_only     the write fails with EROFS ("Read-only file system"); tests run as root in CI, where
                permission bits do not stop writes, so the error is raised where the OS would raise it
"""

import errno
import os
import signal
import sys

import grain


def _patch_save(fault: str, step: int) -> None:
  original = grain.checkpoint.CheckpointHandler.save

  def save(self, directory, item=None, args=None):
    # directory: <checkpoints>/<step>.orbax-checkpoint-tmp-<id>/data, the state item already written.
    if directory.parent.name.split(".")[0] == str(step):
      if fault == "kill_in_save":
        os.kill(os.getpid(), signal.SIGKILL)
      code = errno.ENOSPC if fault == "disk_full" else errno.EROFS
      raise OSError(code, os.strerror(code), str(directory))
    return original(self, directory, item, args)

  grain.checkpoint.CheckpointHandler.save = save


if __name__ == "__main__":
  fault, step, sep, *cli_args = sys.argv[1:]
  assert sep == "--", "usage: fault_injection.py FAULT STEP -- rsjax-args..."
  _patch_save(fault, int(step))
  from rsjax.cli import main

  sys.exit(main(cli_args))
