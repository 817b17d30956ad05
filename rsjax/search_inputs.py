"""Images for indexing and zero-shot evaluation: an image folder or an annotated data set.

A path is read as
- a data set folder with captions.jsonl (the ../shared/data layout): its `image` entries, in file
  order, with their `label` where present;
- any other folder: every image file below it, in sorted path order; for zero-shot, the first
  level of folders are the classes (<root>/<class>/<image>, as rsjax.data.sources reads them).

An archive of before/after pairs (for a change encoder, rsjax/models/temporal.py) is two folders
whose images are matched by their path below each (`list_pairs`), or a captions.jsonl data set
whose rows name `image_a` and `image_b`. A pair is the tuple (before, after) wherever a single
image is a path, and decodes to [2, size, size, 3].
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


def _image_files(root: str) -> list[str]:
  found = []
  for folder, dirs, files in os.walk(root):
    dirs.sort()
    found += [os.path.join(folder, f) for f in sorted(files)
              if f.lower().endswith(sources.IMAGE_EXTENSIONS)]
  return found


def list_pairs(before: str, after: str, bad: records.BadRecords | None = None
               ) -> list[tuple[str, str]]:
  """(before, after) absolute paths of two folders' images matched by their relative path, in
  sorted order. An image without its other date stops with a line naming the pairs that lack one,
  or with `bad` is added to it and left out."""
  roots = [os.path.abspath(before), os.path.abspath(after)]
  names = []
  for flag, root in zip(("before", "after"), roots):
    if not os.path.isdir(root):
      raise FileNotFoundError(f"--pairs: no {flag} folder {root}")
    names.append({os.path.relpath(f, root) for f in _image_files(root)})
  lonely = sorted((names[0] ^ names[1]))
  for name in lonely:
    missing = "after" if name in names[0] else "before"
    error = records.MissingImageError(f"pair {name}: no {missing} image "
                                      f"{os.path.join(roots[missing == 'after'], name)}")
    if bad is None:
      more = f" (and {len(lonely) - 1} more pairs without one of their dates)" if len(lonely) > 1 \
          else ""
      raise type(error)(f"{error}{more}; {SKIP_HINT}")
    bad.add(name, error)
  both = sorted(names[0] & names[1])
  if not both:
    raise records.NoRecordsError(f"--pairs {before} {after}: no image name is in both folders")
  return [(os.path.join(roots[0], n), os.path.join(roots[1], n)) for n in both]


def list_images(path: str, skip_bad: bool = False) -> list[str | tuple[str, str]]:
  """Absolute image paths of an archive, each once: a captions.jsonl data set (pairs where its
  rows name image_a and image_b), a folder tree, or one file."""
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
        listed.append(rec.images[0] if len(rec.images) == 1 else tuple(rec.images))
    records.check_bad(bad, skip_bad, path, SKIP_HINT)
    if len({isinstance(e, tuple) for e in listed}) > 1:
      raise InputError(f"{path}/captions.jsonl: rows with 'image' and rows with 'image_a' / "
                       "'image_b' mixed; an index holds single images or pairs, not both")
    return list(dict.fromkeys(listed))
  found = _image_files(path)
  if not found:
    raise FileNotFoundError(f"no image files ({', '.join(sources.IMAGE_EXTENSIONS)}) under {path}")
  return found


def load_image(path: str, size: int) -> np.ndarray:
  """One file -> [size, size, 3] uint8; a corrupt file raises CorruptImageError naming it."""
  return decode.decode_resized(decode.read_bytes(path), size, name=path)


def load_pair(pair: tuple[str, str], size: int) -> np.ndarray:
  """(before, after) files -> [2, size, size, 3] uint8 (dates of different sizes: PairSizeError)."""
  return decode.decode_pair(pair, size)


def load_entry(entry: str | tuple[str, str], size: int) -> np.ndarray:
  """An image path -> [size, size, 3], a (before, after) pair -> [2, size, size, 3]; uint8."""
  return load_pair(entry, size) if isinstance(entry, tuple) else load_image(entry, size)


def batches(paths: list, size: int, batch: int, bad: records.BadRecords | None = None,
            workers: int = 1) -> Iterator[tuple[np.ndarray, list]]:
  """(decoded images [b, size, size, 3] uint8, or pairs [b, 2, size, size, 3], their paths),
  `batch` paths at a time.

  `workers` threads read and decode (the data layer's decoders, rsjax/data/decode.py: PIL and
  tifffile release the GIL) while the caller encodes the previous batch: the next batch is in
  flight before this one is yielded. A file that cannot be read stops with its name, or with
  `bad` is added to it and left out (a batch may then be smaller, or empty: [0, size, size, 3])."""
  import concurrent.futures

  def one(p):
    try:
      return load_entry(p, size), None
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
          bad.add(p if isinstance(p, str) else " / ".join(p), error)
          continue
        images.append(image)
        kept.append(p)
      shape = (2, size, size, 3) if paths and isinstance(paths[0], tuple) else (size, size, 3)
      yield (np.stack(images) if images else np.zeros((0, *shape), np.uint8)), kept


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
