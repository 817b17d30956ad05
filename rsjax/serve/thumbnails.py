"""Thumbnails of the archive's images, made on demand from the paths recorded in the index.

A row of an image index is one file; a row of a pair index (a change encoder's) is two, its
before and after images, each with a thumbnail of its own. Only images of the index are readable, addressed by their path relative to the archive root (the
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


def row_files(entry: str | tuple[str, ...]) -> tuple[str, ...]:
  """The files of one index row: (image,) or (before, after)."""
  return (entry,) if isinstance(entry, str) else tuple(entry)


class Thumbnails:
  """PNG thumbnails [<= THUMB_PX px a side] of the files of an index's rows, cached.

  `entries`: the index's paths, one str per row (images) or one (before, after) tuple (pairs)."""

  def __init__(self, entries: list):
    self.files = [f for entry in entries for f in row_files(entry)]
    self.root = archive_root(self.files)
    self.real_root = os.path.realpath(self.root)
    self.by_name = {self.relative(f): f for f in self.files}

  def relative(self, file: str) -> str:
    """The archive-relative name of an indexed file, as URLs carry it ('/' separated)."""
    return os.path.relpath(file, self.root).replace(os.sep, "/")

  def url(self, file: str) -> str:
    return "/thumbs/" + urllib.parse.quote(self.relative(file))

  def file_of(self, relative: str) -> str:
    """The indexed file at an archive-relative path; NotInIndex for anything else."""
    file = self.by_name.get(relative)
    if file is None:
      raise NotInIndex(f"{relative[:200]!r} is no image of this index")
    return file

  def png(self, relative: str) -> bytes:
    """Thumbnail bytes of the indexed image at `relative`."""
    file = self.file_of(relative)
    real = os.path.realpath(file)
    if os.path.commonpath([real, self.real_root]) != self.real_root:
      raise OutsideArchive(f"{relative[:200]!r} resolves outside the archive; not served")
    return self._png(file)

  @functools.lru_cache(maxsize=CACHE_ITEMS)
  def _png(self, file: str) -> bytes:
    from PIL import Image

    from rsjax.data import decode

    array = decode.to_uint8(decode.decode_file(file))
    image = Image.fromarray(array[..., :3] if array.shape[-1] >= 3 else array[..., 0])
    scale = THUMB_PX / max(image.size)
    # Small tiles are enlarged with nearest neighbours: their pixels stay visible, not blurred.
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         resample)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
