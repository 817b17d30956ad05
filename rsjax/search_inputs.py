"""Images for indexing and zero-shot evaluation: an image folder or an annotated data set.

A path is read as
- a data set folder with captions.jsonl (the ../shared/data layout): its `image` entries, in file
  order, with their `label` where present;
- any other folder: every image file below it, in sorted path order; for zero-shot, the first
  level of folders are the classes (<root>/<class>/<image>, as rsjax.data.sources reads them).
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from rsjax.data import decode, records, sources
from rsjax.errors import InputError


SKIP_HINT = "pass --skip-bad to leave bad records out and list them"


def _reader(path: str):
  fmt = "captions_jsonl" if os.path.isfile(os.path.join(path, "captions.jsonl")) else "image_folder"
  return sources.read_source(fmt, path)


def dataset_records(path: str, split: str | None = None, skip_bad: bool = False,
                    hint: str = "fix or remove the lines listed") -> list[records.Record]:
  """Records of a captions.jsonl data set or a class-folder tree, optionally one split only; one
  per image (rows of the same image are merged, records.merge_duplicates). Bad annotation lines
  are all listed in one error (`hint`: what to do about them), or with `skip_bad` left out and
  logged."""
  recs, bad = records.collect(_reader(path), require_captions=False, check_files=False)
  records.check_bad(bad, skip_bad, path, hint)
  if split:
    recs = [r for r in recs if r.split == split]
    if not recs:
      raise records.NoRecordsError(f"{path}: no images in split '{split}'")
  return recs


def list_images(path: str, skip_bad: bool = False) -> list[str]:
  """Absolute image paths of an archive, each once: a captions.jsonl data set, a folder tree, or
  one file."""
  path = os.path.abspath(path)
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no image folder or data set at {path}")
  if os.path.isfile(os.path.join(path, "captions.jsonl")):
    # Only the image names matter to an archive: lines that cannot be read are bad, but splits,
    # labels and captions are not checked; an image named by several rows is listed once.
    bad = records.BadRecords()
    listed = []
    for rec in _reader(path):
      if isinstance(rec, records.BadRecordError):
        bad.add_unparsed(rec)
      else:
        listed.append(rec.images[0])
    records.check_bad(bad, skip_bad, path, SKIP_HINT)
    return list(dict.fromkeys(listed))
  found = []
  for root, dirs, files in os.walk(path):
    dirs.sort()
    found += [os.path.join(root, f) for f in sorted(files)
              if f.lower().endswith(sources.IMAGE_EXTENSIONS)]
  if not found:
    raise FileNotFoundError(f"no image files ({', '.join(sources.IMAGE_EXTENSIONS)}) under {path}")
  return found


def load_image(path: str, size: int) -> np.ndarray:
  """One file -> [size, size, 3] uint8; a corrupt file raises CorruptImageError naming it."""
  return decode.decode_resized(decode.read_bytes(path), size, name=path)


def batches(paths: list[str], size: int, batch: int, bad: records.BadRecords | None = None,
            workers: int = 1) -> Iterator[tuple[np.ndarray, list[str]]]:
  """(decoded images [b, size, size, 3] uint8, their paths), `batch` paths at a time.

  `workers` threads read and decode (the data layer's decoders, rsjax/data/decode.py: PIL and
  tifffile release the GIL) while the caller encodes the previous batch: the next batch is in
  flight before this one is yielded. A file that cannot be read stops with its name, or with
  `bad` is added to it and left out (a batch may then be smaller, or empty: [0, size, size, 3])."""
  import concurrent.futures

  def one(p):
    try:
      return load_image(p, size), None
    except records.BadRecordError as e:
      return None, e

  starts = range(0, len(paths), batch)
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    def submit(start):
      return [(p, pool.submit(one, p)) for p in paths[start: start + batch]]

    pending = submit(starts[0]) if starts else []
    for n in range(len(starts)):
      current = pending
      pending = submit(starts[n + 1]) if n + 1 < len(starts) else []
      images, kept = [], []
      for p, future in current:
        image, error = future.result()
        if error is not None:
          if bad is None:
            for _, f in pending:
              f.cancel()
            raise type(error)(f"{error}; {SKIP_HINT}") from None
          bad.add(p, error)
          continue
        images.append(image)
        kept.append(p)
      yield (np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)), kept


def class_names_for(path: str, labels: list[str]) -> list[str]:
  """Class order: the data set's classnames.txt where it has one, else sorted labels."""
  listed = os.path.join(path, "classnames.txt")
  if os.path.isfile(listed):
    with open(listed, encoding="utf-8") as f:
      names = [line.strip() for line in f if line.strip()]
    missing = sorted(set(labels) - set(names))
    if missing:
      raise InputError(f"{listed}: labels {missing} of the data set are not listed; add them")
    return names
  return sorted(set(labels))


def labelled_images(path: str, size: int, split: str | None = None,
                    limit: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """(images [N, size, size, 3] uint8, labels [N] int32, class names) of a classification set."""
  recs = [r for r in dataset_records(path, split) if r.label is not None]
  if not recs:
    raise InputError(f"{path}: no labelled images (need 'label' in captions.jsonl or class "
                     "folders)")
  if limit:
    recs = recs[:: max(1, len(recs) // limit)][:limit]  # spread over the classes
  labels = [str(r.label) for r in recs]
  names = class_names_for(path, labels)
  index = {n: i for i, n in enumerate(names)}
  images = np.stack([load_image(r.images[0], size) for r in recs])
  return images, np.asarray([index[lbl] for lbl in labels], np.int32), names
