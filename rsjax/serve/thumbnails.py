"""Thumbnails of the archive's images, made on demand from the paths recorded in the index.

Only images of the index are readable, addressed by their path relative to the archive root (the
folder that holds every indexed image): a path that is not exactly an indexed one is not found,
whatever it spells (`..`, absolute paths, URL-encoded or backslashed variants), and an indexed
path that resolves outside the archive (a symlink out of it) is refused.
"""

from __future__ import annotations

import functools
import io
import os
import urllib.parse

THUMB_PX = 160  # longest side of a thumbnail
CACHE_ITEMS = 4096  # thumbnails kept in memory (about 40 KiB each at most)


class NotInIndex(LookupError):
  """A thumbnail path that is no image of the index (404)."""


class OutsideArchive(PermissionError):
  """An indexed path whose file lies outside the archive, through a symlink (403)."""


def archive_root(paths: list[str]) -> str:
  """The deepest folder holding every path (absolute)."""
  return os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else "/"


class Thumbnails:
  """PNG thumbnails [<= THUMB_PX px a side] of the rows of an index, cached."""

  def __init__(self, paths: list[str]):
    self.paths = paths
    self.root = archive_root(paths)
    self.real_root = os.path.realpath(self.root)
    self.rows = {self.relative(n): n for n in range(len(paths))}

  def relative(self, row: int) -> str:
    """The archive-relative name of a row, as URLs carry it ('/' separated)."""
    return os.path.relpath(self.paths[row], self.root).replace(os.sep, "/")

  def url(self, row: int) -> str:
    return "/thumbs/" + urllib.parse.quote(self.relative(row))

  def row_of(self, relative: str) -> int:
    """The row of an archive-relative path; NotInIndex for anything else."""
    row = self.rows.get(relative)
    if row is None:
      raise NotInIndex(f"{relative[:200]!r} is no image of this index")
    return row

  def png(self, relative: str) -> bytes:
    """Thumbnail bytes of the indexed image at `relative`."""
    row = self.row_of(relative)
    real = os.path.realpath(self.paths[row])
    if os.path.commonpath([real, self.real_root]) != self.real_root:
      raise OutsideArchive(f"{relative[:200]!r} resolves outside the archive; not served")
    return self._png(row)

  @functools.lru_cache(maxsize=CACHE_ITEMS)
  def _png(self, row: int) -> bytes:
    from PIL import Image

    from rsjax.data import decode

    array = decode.to_uint8(decode.decode_file(self.paths[row]))
    image = Image.fromarray(array[..., :3] if array.shape[-1] >= 3 else array[..., 0])
    scale = THUMB_PX / max(image.size)
    # Small tiles are enlarged with nearest neighbours: their pixels stay visible, not blurred.
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         resample)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
