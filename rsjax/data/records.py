"""One annotation record, its checks, and the errors a bad record raises.

Every source (captions.jsonl, Karpathy JSON, LEVIR-CC, image folders, web corpora) yields `Record`s
as they are written in the file; `check_record` then validates them. Each error names the file and
the record, so a user can find and fix the line. `collect` applies the checks to a whole source in one
pass and merges rows of the same image; `check_bad` then stops on every bad record at once, or
skips and lists them.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable

from rsjax import atomic
from rsjax.console import log
from rsjax.errors import InputError

SPLITS = ("train", "val", "test")


class BadRecordError(InputError):
  """A record that cannot be used; the message names the file and the record."""


class MissingImageError(BadRecordError):
  """The image file a record points to does not exist."""


class CorruptImageError(BadRecordError):
  """The image file exists but cannot be decoded (truncated, wrong format, ...)."""


class PairSizeError(BadRecordError):
  """The two dates of a before/after pair differ in size (not the same ground)."""


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
    what = "has only blank captions" if record.captions else "has no captions"
    raise EmptyCaptionsError(f"{at}: image {record.key!r} {what}")
  if check_files:
    for path in record.images:
      if not os.path.isfile(path):
        raise MissingImageError(f"{at}: image file not found: {path}")
  return record if captions == record.captions else dataclasses.replace(record, captions=captions)


class DuplicateImageError(BadRecordError):
  """A row names an image already listed, in another split or with another label."""


class NoRecordsError(BadRecordError):
  """Nothing usable is left of a data set or one of its splits."""


# How many bad records an error or a log lists one per line; the counts by kind cover them all.
LISTED = 50


@dataclasses.dataclass
class BadRecords:
  """Every bad record of a data set, found in one pass: (where, error class, message) each."""
  items: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
  _classes: list[type] = dataclasses.field(default_factory=list, repr=False)
  _splits: list[str | None] = dataclasses.field(default_factory=list, repr=False)

  def add(self, record_where: str, error: BadRecordError, split: str | None = None) -> None:
    """`split`: the split the record was in, where it could be read (None for broken lines)."""
    self.items.append((record_where, type(error).__name__, str(error)))
    self._classes.append(type(error))
    self._splits.append(split)

  def in_split(self, split: str) -> "BadRecords":
    """The bad records that were in `split`."""
    out = BadRecords()
    for item, cls, s in zip(self.items, self._classes, self._splits):
      if s == split:
        out.items.append(item), out._classes.append(cls), out._splits.append(s)
    return out

  def __len__(self) -> int:
    return len(self.items)

  def add_unparsed(self, error: BadRecordError) -> None:
    """A line a reader could not parse: its message starts with where it is ("file:line: ...")."""
    self.add(str(error).split(": ")[0], error)

  def counts(self) -> dict[str, int]:
    """{error class name: count}, in the order the kinds first occur."""
    out: dict[str, int] = {}
    for _, kind, _ in self.items:
      out[kind] = out.get(kind, 0) + 1
    return out

  def kinds(self) -> str:
    """The counts as text: 'MissingImageError 7, CaptionTypeError 1'."""
    return ", ".join(f"{k} {n}" for k, n in self.counts().items())

  def _listing(self) -> list[str]:
    """One line per record, in file order (decode failures are found after the checks)."""
    ordered = sorted(self.items, key=lambda item: _file_order(item[0]))
    return capped([f"  {kind}: {message}" for _, kind, message in ordered])

  def summary(self) -> str:
    """The log lines of a run that skipped these records."""
    return "\n".join([f"skipped {len(self.items)} bad record(s) ({self.kinds()}):"]
                     + self._listing())

  def error(self, source: str, hint: str) -> BadRecordError:
    """The error that stops a run on these records: one line for one record; for several, their
    counts by kind and the list. Of the records' own class when they share one."""
    classes = set(self._classes)
    cls = classes.pop() if len(classes) == 1 else BadRecordError
    if len(self.items) == 1:
      return cls(f"{self.items[0][2]}; {hint}")
    return cls("\n".join([f"{source}: {len(self.items)} bad records ({self.kinds()}); {hint}:"]
                         + self._listing()))

  def to_json(self) -> list[dict]:
    return [{"record": w, "error": k, "message": m} for w, k, m in self.items]


def capped(lines: list[str]) -> list[str]:
  """The first LISTED lines, and a last one saying how many more there are."""
  more = len(lines) - LISTED
  return lines[:LISTED] + ([f"  ... and {more} more"] if more > 0 else [])


def _file_order(where: str) -> tuple[str, int, str]:
  """'captions.jsonl:12' -> ('captions.jsonl', 12, ''), so that line 12 sorts after line 9."""
  file, _, rest = where.rpartition(":")
  return (file, int(rest), "") if file and rest.isdigit() else (where, -1, where)


def merge_duplicates(recs: list[Record], bad: BadRecords) -> tuple[list[Record], list[str]]:
  """One record per image (or image pair), in the order images first appear.

  Rows that name the same image in the same split with the same label are merged: the later
  rows' captions are appended to the first row's (exact repeats dropped). A row that names it in
  another split (a leak between train and test) or with another label is a DuplicateImageError.
  Returns (records, one note per merge for the log)."""
  first: dict[tuple[str, ...], int] = {}
  out: list[Record] = []
  notes = []
  for r in recs:
    i = first.get(r.images)
    if i is None:
      first[r.images] = len(out)
      out.append(r)
      continue
    kept = out[i]
    if (r.split, r.label, r.changed) != (kept.split, kept.label, kept.changed):
      field = ("split" if r.split != kept.split else "label" if r.label != kept.label
               else "change flag")
      theirs, ours = [getattr(x, {"change flag": "changed"}.get(field, field)) for x in (kept, r)]
      bad.add(r.where, split=r.split, error=DuplicateImageError(
          f"{r.where} [{r.key}]: the image of {kept.where} again, with {field} {ours!r} "
          f"instead of {theirs!r}; an image is listed once (rows of the same image, split and "
          "label are merged)"))
      continue
    new = tuple(dict.fromkeys(c for c in r.captions if c not in kept.captions))
    keywords = kept.keywords + tuple(k for k in r.keywords if k not in kept.keywords)
    out[i] = dataclasses.replace(kept, captions=kept.captions + new, keywords=keywords)
    notes.append(f"{r.where}: the image of {kept.where}; {len(new)} caption(s) merged into it")
  return out, notes


def collect(records: Iterable, require_captions: bool = True, check_files: bool = True,
            bad: BadRecords | None = None) -> tuple[list[Record], BadRecords]:
  """Checks every record in one pass -> (good records in file order, every bad one).

  Nothing is raised here: the caller decodes what it needs (adding decode failures to `bad`), then
  calls `check_bad` once, so that one run lists every fault. Rows of the same image are merged
  (merge_duplicates)."""
  bad = BadRecords() if bad is None else bad
  good = []
  for record in records:
    try:
      if isinstance(record, BadRecordError):  # a line the reader could not parse
        raise record
      record = check_record(record, require_captions, check_files)
    except BadRecordError as e:
      if isinstance(record, BadRecordError):
        bad.add_unparsed(e)
      else:
        bad.add(record.where or record.key, e, split=record.split)
      continue
    good.append(record)
  good, notes = merge_duplicates(good, bad)
  if notes:
    log("\n".join([f"merged {len(notes)} row(s) naming an image already listed:"]
                  + capped([f"  {n}" for n in notes])))
  return good, bad


def check_bad(bad: BadRecords, skip_bad: bool, source: str, hint: str,
              listing: str | None = None) -> None:
  """After the whole set was read: raises the error listing every bad record, or (skipping)
  logs them. `hint`: how to skip them in this command (a config key or a flag). `listing`: a
  JSON file to write every one of them to (the log and the error show the first LISTED)."""
  if not len(bad):
    return
  if listing:
    os.makedirs(os.path.dirname(listing) or ".", exist_ok=True)
    atomic.write_json(listing, bad.to_json())
    hint = f"{hint} (all {len(bad)} are in {listing})" if len(bad) > LISTED else hint
  if not skip_bad:
    raise bad.error(source, hint)
  log(bad.summary() + (f"\n  (all {len(bad)} are listed in {listing})" if listing else ""))


def require_records(recs: list, bad: BadRecords, source: str, what: str = "") -> None:
  """Raises NoRecordsError when nothing usable is left, naming how many were bad and why."""
  if recs:
    return
  scope = f" in {what}" if what else ""
  if len(bad):
    raise NoRecordsError(f"{source}: no usable records{scope}: all {len(bad)} were bad "
                         f"({bad.kinds()}; listed above)")
  raise NoRecordsError(f"{source}: no records{scope}")
