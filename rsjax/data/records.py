"""One annotation record, its checks, and the errors a bad record raises.

Every source (captions.jsonl, Karpathy JSON, LEVIR-CC, image folders, web corpora) yields `Record`s
as they are written in the file; `check_record` then validates them. Each error names the file and
the record, so a user can find and fix the line. `collect` applies the checks to a whole source and,
when asked, skips the bad records and lists them instead of stopping.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable

SPLITS = ("train", "val", "test")


class BadRecordError(ValueError):
  """A record that cannot be used; the message names the file and the record."""


class MissingImageError(BadRecordError):
  """The image file a record points to does not exist."""


class CorruptImageError(BadRecordError):
  """The image file exists but cannot be decoded (truncated, wrong format, ...)."""


class EmptyCaptionsError(BadRecordError):
  """A record of an image-text set has no captions."""


class CaptionTypeError(BadRecordError):
  """A caption is not text (a number, a list, null, ...)."""


class UnknownSplitError(BadRecordError):
  """A record's split is not one of train / val / test."""


@dataclasses.dataclass(frozen=True)
class Record:
  """One annotated image (or image pair), as read from its annotation file.

  `images` holds absolute paths: one for image-text and classification sets, two (before, after)
  for change pairs. `where` says where the record came from (file:line or file:key) for errors.
  """
  key: str
  split: str
  images: tuple[str, ...]
  captions: tuple = ()
  label: str | None = None
  changed: bool | None = None
  keywords: tuple[str, ...] = ()
  where: str = ""


def check_record(record: Record, require_captions: bool = True, check_files: bool = True) -> Record:
  """The record with blank captions dropped, or the matching BadRecordError if it cannot be used.

  Blank strings are dropped rather than rejected: the official RSICD annotation has three."""
  at = f"{record.where} [{record.key}]" if record.where else record.key
  if record.split not in SPLITS:
    raise UnknownSplitError(f"{at}: unknown split {record.split!r} (expected one of {SPLITS})")
  for i, caption in enumerate(record.captions):
    if not isinstance(caption, str):
      raise CaptionTypeError(f"{at}: caption {i} is {caption!r} ({type(caption).__name__}), "
                             "not text")
  captions = tuple(c.strip() for c in record.captions if c.strip())
  if require_captions and not captions:
    raise EmptyCaptionsError(f"{at}: image {record.key!r} has an empty caption list")
  if check_files:
    for path in record.images:
      if not os.path.isfile(path):
        raise MissingImageError(f"{at}: image file not found: {path}")
  return record if captions == record.captions else dataclasses.replace(record, captions=captions)


@dataclasses.dataclass
class BadRecords:
  """The records skipped under data.skip_bad_records: (where, error class, message) each."""
  items: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

  def add(self, record_where: str, error: BadRecordError) -> None:
    self.items.append((record_where, type(error).__name__, str(error)))

  def __len__(self) -> int:
    return len(self.items)

  def summary(self) -> str:
    lines = [f"skipped {len(self.items)} bad record(s):"]
    lines += [f"  {kind}: {message}" for _, kind, message in self.items]
    return "\n".join(lines)

  def to_json(self) -> list[dict]:
    return [{"record": w, "error": k, "message": m} for w, k, m in self.items]


def collect(records: Iterable, skip_bad: bool = False, require_captions: bool = True,
            check_files: bool = True, bad: BadRecords | None = None) -> tuple[list[Record], BadRecords]:
  """Checks every record; raises on the first bad one, or with `skip_bad` skips and lists it."""
  bad = BadRecords() if bad is None else bad
  good = []
  for record in records:
    try:
      if isinstance(record, BadRecordError):  # a line the reader could not parse
        raise record
      record = check_record(record, require_captions, check_files)
    except BadRecordError as e:
      if not skip_bad:
        raise
      bad.add(str(e).split(": ")[0] if isinstance(record, BadRecordError)
              else record.where or record.key, e)
      continue
    good.append(record)
  return good, bad
