"""Write-to-temporary-then-rename: a file or folder is either wholly there or not at all.

A process killed while writing (a pre-empted host, a full disk) never leaves a half-written
file under the final name, so a reader can trust that whatever it finds is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path beside `path`; renames it onto `path` when the block completes.

  Write the file at the yielded path (by name: any library that takes a path works). On an
  exception the temporary file is removed and `path` is left as it was."""
  path = os.fspath(path)
  folder = os.path.dirname(path) or "."
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.tmp-")
  os.close(fd)
  os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() would honour the umask
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = True) -> Iterator[str]:
  """Yields a temporary folder beside `path`; renames it to `path` when the block completes.

  An existing `path` is replaced when `replace` (a stale copy); otherwise the new folder is
  dropped and the existing one kept (a concurrent writer finished first with the same content).
  On an exception the temporary folder is removed and `path` is left as it was."""
  path = os.fspath(path)
  parent = os.path.dirname(path) or "."
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
  try:
    yield tmp
    if os.path.exists(path):
      if not replace:
        return
      shutil.rmtree(path, ignore_errors=True)
    try:
      os.replace(tmp, path)
    except OSError:  # another process created it meanwhile; its content is equivalent
      if not os.path.exists(path):
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  with atomic_file(path) as tmp, open(tmp, "wb") as f:
    f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
  with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    f.write(text)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
  write_text(path, json.dumps(obj, indent=indent))
