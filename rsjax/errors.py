"""What rsjax raises when the user can act, and how the command line reports any exception.

The rule for every command: an error the user can fix prints one line on stderr (what, where, what
to do) and exits 2 (input or config) or 1 (runtime: a failed write, a non-finite loss); anything
else is a bug in rsjax and says so. RSJAX_DEBUG=1 adds the traceback to any of them.

  RsjaxError          exit 1  the user can act on it; the message names the file, key or step
    InputError        exit 2  data, files or arguments offered to a command
      ConfigError     exit 2  a config file, override or value
"""

from __future__ import annotations

import os
import traceback

DEBUG_ENV = "RSJAX_DEBUG"


class RsjaxError(Exception):
  """A failure the user can act on; the message says what, where and what to do."""
  exit_code = 1
  kind = "error"


class InputError(RsjaxError, ValueError):
  """The data, files or arguments given to a command cannot be used."""
  exit_code = 2
  kind = "input error"


class ConfigError(InputError):
  """A config file, override or value is wrong; the message names the key."""
  kind = "config error"


# OS errors about a path the user named (exit 2); any other OSError (disk full, I/O error) is a
# runtime failure (exit 1). Both print the OS's message, which names the file.
_PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
                PermissionError)


def describe(error: BaseException) -> tuple[int, str, bool]:
  """(exit code, one-line kind + message, is a bug) for an exception that reached the CLI."""
  if isinstance(error, RsjaxError):
    return error.exit_code, f"{error.kind}: {error}", False
  if isinstance(error, _PATH_ERRORS):
    return 2, f"input error: {error}", False
  if isinstance(error, OSError):
    return 1, f"error: {type(error).__name__}: {error}", False
  if isinstance(error, MemoryError):
    return 1, "error: out of host memory (MemoryError); use a smaller batch or data set", False
  return 1, (f"internal error: {type(error).__name__}: {error} -- this is a bug in rsjax; "
             f"rerun with {DEBUG_ENV}=1 to see the traceback, and please report it"), True


def report(error: BaseException, command: str, stderr) -> int:
  """Prints `error` for the user of `rsjax COMMAND` and returns the exit code."""
  code, message, _ = describe(error)
  if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
    traceback.print_exception(error, file=stderr)
  print(f"rsjax {command}: {message}", file=stderr)
  return code
