"""Write-then-rename: a file or folder is wholly there or not at all, and a failure keeps the old."""

import json
import os

import pytest

from rsjax import atomic


def test_write_json_replaces_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "sub" / "out.json"
  atomic.write_json(path, {"a": 1})
  atomic.write_json(path, {"a": 2}, indent=None)
  assert json.loads(path.read_text()) == {"a": 2}
  assert sorted(os.listdir(path.parent)) == ["out.json"]
  assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # as open() would make it


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


def test_a_failed_write_keeps_the_previous_file(tmp_path):
  path = tmp_path / "out.txt"
  atomic.write_text(path, "old")
  with pytest.raises(RuntimeError, match="disk full"):
    with atomic.atomic_file(path) as tmp, open(tmp, "w") as f:
      f.write("half")
      raise RuntimeError("disk full")
  assert path.read_text() == "old"
  assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_dir_replaces_or_keeps_an_existing_folder(tmp_path):
  path = tmp_path / "cache"
  for content, replace in (("first", True), ("second", True), ("third", False)):
    with atomic.atomic_dir(path, replace=replace) as tmp:
      with open(os.path.join(tmp, "x"), "w") as f:
        f.write(content)
  assert (path / "x").read_text() == "second"  # replace=False kept the finished one
  with pytest.raises(ValueError):
    with atomic.atomic_dir(path) as tmp:
      raise ValueError("interrupted")
  assert (path / "x").read_text() == "second"
  assert sorted(os.listdir(tmp_path)) == ["cache"]
