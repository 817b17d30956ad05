"""Annotation readers for the formats RS image-text data sets are distributed in.

Each reader takes the annotation file (or folder) and the folder its image paths are relative to,
and yields `Record`s in file order without checking them (see records.check_record). A line or
entry that cannot even be parsed is yielded as a `BadRecordError` instance, so that
`records.collect` can stop on it or skip it like any other bad record.

  captions_jsonl  ../shared/data format: {"image"|"image_a"+"image_b", "split", "captions", ...}
  karpathy        dataset.json of RSICD / UCM-Captions / Sydney-Captions: {"images": [...]}
  rsitmd          RSITMD's dataset_RSITMD.json: Karpathy layout plus per-image "keywords"
  nwpu            NWPU-Captions' dataset_nwpu.json: {class: [{"filename", "split", "raw", "raw_1".."raw_4"}]}
  levir_cc        LevirCCcaptions.json: {"images": [{"filepath", "filename", "changeflag", "sentences"}]}
  levir_mci       LEVIR-MCI token files: {train,val,test}.txt + tokens/<name>.txt (or tokens.tar.gz)
  image_folder    <root>/<class>/<image>: classification sets without annotation files
"""

from __future__ import annotations

import json
import os
from typing import Callable, Iterator

from rsjax.data.records import SPLITS, BadRecordError, NoRecordsError, Record
from rsjax.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


def _join(root: str, relative: str) -> str:
  return os.path.normpath(os.path.join(root, relative))


def read_captions_jsonl(path: str, image_root: str | None = None,
                        caption_field: str = "captions") -> Iterator[Record | BadRecordError]:
  """captions.jsonl: one JSON object per line; image paths relative to the file's folder.

  A UTF-8 byte-order mark (Windows editors write one) is accepted; a line that is not UTF-8 is a
  bad record of its own."""
  root = image_root or os.path.dirname(os.path.abspath(path))
  with open(path, "rb") as f:
    for line_no, raw in enumerate(f, 1):
      where = f"{path}:{line_no}"
      try:
        line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
      except UnicodeDecodeError as e:
        yield BadRecordError(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                             f"{e.start + 1}); save the file as UTF-8")
        continue
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        yield BadRecordError(f"{where}: not valid JSON ({e.msg} at column {e.colno})")
        continue
      if not isinstance(row, dict):
        yield BadRecordError(f"{where}: expected a JSON object, got {type(row).__name__}")
        continue
      if "image" in row:
        images = (row["image"],)
      elif "image_a" in row and "image_b" in row:
        images = (row["image_a"], row["image_b"])
      else:
        yield BadRecordError(f"{where}: no 'image' (or 'image_a' and 'image_b') field")
        continue
      if not all(isinstance(p, str) and p.strip() for p in images):
        yield BadRecordError(f"{where}: the image path {images if len(images) > 1 else images[0]!r}"
                             " is not a file name")
        continue
      label, changed = row.get("label"), row.get("changed")
      if label is not None and not isinstance(label, (str, int)) or isinstance(label, bool):
        yield BadRecordError(f"{where}: 'label' is {label!r}; a class name is text")
        continue
      if changed not in (None, True, False, 0, 1):
        yield BadRecordError(f"{where}: 'changed' is {changed!r}; expected true or false")
        continue
      split = row.get("split", "train")
      captions = row.get(caption_field, [])
      if not isinstance(captions, list):
        captions = [captions]  # a bare caption is checked (and rejected if not text) later
      yield Record(key=images[0], split=split if isinstance(split, str) else repr(split),
                   images=tuple(_join(root, p) for p in images), captions=tuple(captions),
                   label=None if label is None else str(label),
                   changed=None if changed is None else bool(changed),
                   keywords=_text_list(row.get("keywords", [])), where=where)


def _load_json(path: str) -> object:
  """A whole-file JSON annotation (a UTF-8 byte-order mark accepted)."""
  with open(path, "rb") as f:
    raw = f.read()
  try:
    return json.loads(raw.decode("utf-8-sig"))
  except UnicodeDecodeError as e:
    raise BadRecordError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                         f"{e.start}); save the file as UTF-8") from None
  except json.JSONDecodeError as e:
    raise BadRecordError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _sentences(entry: dict) -> list:
  """Karpathy 'sentences' -> raw caption texts; anything that is not text (a number, null, a
  non-dict sentence) is passed on, for check_record to reject with its position."""
  sentences = entry.get("sentences", [])
  out = []
  for s in sentences if isinstance(sentences, list) else [sentences]:
    if not isinstance(s, dict):
      out.append(s)
    elif isinstance(s.get("raw"), str):
      out.append(s["raw"].strip())
    elif "raw" not in s and isinstance(s.get("tokens"), list) and all(
        isinstance(t, str) for t in s["tokens"]):
      out.append(" ".join(s["tokens"]))
    else:
      out.append(s.get("raw", s.get("tokens")))
  return out


def _text_list(value) -> tuple[str, ...]:
  """A list of strings as a tuple; anything else (a bare string, a number) as ()."""
  return tuple(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else ()


def _bad_fields(entry: dict, where: str, names: tuple[str, ...]) -> BadRecordError | None:
  """A BadRecordError when one of the `names` fields is present but not a non-empty string."""
  for name in names:
    if name in entry and not (isinstance(entry[name], str) and entry[name].strip()):
      return BadRecordError(f"{where}: field {name!r} is {entry[name]!r}, not a file name")
  return None


def read_karpathy(path: str, image_root: str | None = None) -> Iterator[Record | BadRecordError]:
  """Karpathy-style dataset.json: images[i] = {filename, split, sentences[{raw, tokens}], filepath?}.

  Karpathy's "restval" split is part of the training data, as in the original recipe."""
  root = image_root or os.path.dirname(os.path.abspath(path))
  data = _load_json(path)
  for i, entry in enumerate(data.get("images", []) if isinstance(data, dict) else []):
    where = f"{path}:images[{i}]"
    if not isinstance(entry, dict) or "filename" not in entry:
      yield BadRecordError(f"{where}: entry has no 'filename'")
      continue
    if (error := _bad_fields(entry, where, ("filename", "filepath"))) is not None:
      yield error
      continue
    relative = os.path.join(entry.get("filepath", ""), entry["filename"])
    split = entry.get("split", "train")
    split = "train" if split == "restval" else split
    yield Record(key=relative, split=split if isinstance(split, str) else repr(split),
                 images=(_join(root, relative),), captions=tuple(_sentences(entry)),
                 label=entry.get("label"), keywords=_text_list(entry.get("keywords", [])),
                 where=where)


def read_rsitmd(path: str, image_root: str | None = None) -> Iterator[Record | BadRecordError]:
  """RSITMD's dataset_RSITMD.json: the Karpathy layout, each image with a 'keywords' list."""
  yield from read_karpathy(path, image_root)


def read_nwpu(path: str, image_root: str | None = None) -> Iterator[Record | BadRecordError]:
  """NWPU-Captions' dataset_nwpu.json: {class: [{filename, split, raw, raw_1..raw_4}]}.

  Images live in <root>/<class>/<filename>; the class is the record's label."""
  root = image_root or os.path.dirname(os.path.abspath(path))
  data = _load_json(path)
  if not isinstance(data, dict):
    yield BadRecordError(f"{path}: expected an object of classes, got {type(data).__name__}")
    return
  for label, entries in data.items():
    if not isinstance(entries, list):
      yield BadRecordError(f"{path}:{label}: expected a list of images, got "
                           f"{type(entries).__name__}")
      continue
    for i, entry in enumerate(entries):
      where = f"{path}:{label}[{i}]"
      if not isinstance(entry, dict) or "filename" not in entry:
        yield BadRecordError(f"{where}: entry has no 'filename'")
        continue
      if (error := _bad_fields(entry, where, ("filename",))) is not None:
        yield error
        continue
      fields = ["raw"] + [f"raw_{k}" for k in range(1, 10)]
      captions = tuple(entry[k] for k in fields if k in entry)
      relative = os.path.join(label, entry["filename"])
      yield Record(key=relative, split=entry.get("split", "train"),
                   images=(_join(root, relative),), captions=captions, label=label, where=where)


def read_levir_cc(path: str, image_root: str | None = None) -> Iterator[Record | BadRecordError]:
  """LevirCCcaptions.json: pairs in <root>/images/<filepath>/{A,B}/<filename>, with changeflag."""
  root = image_root or os.path.dirname(os.path.abspath(path))
  data = _load_json(path)
  for i, entry in enumerate(data.get("images", []) if isinstance(data, dict) else []):
    where = f"{path}:images[{i}]"
    if not isinstance(entry, dict) or "filename" not in entry:
      yield BadRecordError(f"{where}: entry has no 'filename'")
      continue
    if (error := _bad_fields(entry, where, ("filename", "filepath", "split"))) is not None:
      yield error
      continue
    folder = entry.get("filepath", entry.get("split", "train"))
    pair = tuple(_join(root, os.path.join("images", folder, side, entry["filename"]))
                 for side in ("A", "B"))
    flag = entry.get("changeflag")
    yield Record(key=f"{folder}/{entry['filename']}", split=entry.get("split", "train"),
                 images=pair, captions=tuple(_sentences(entry)),
                 changed=None if flag is None else bool(flag), where=where)


def read_levir_mci(path: str, image_root: str | None = None) -> Iterator[Record | BadRecordError]:
  """LEVIR-MCI / Change-Agent layout of LEVIR-CC: {train,val,test}.txt list the pair names, and
  tokens/<name>.txt (a folder, or packed in tokens.tar.gz) holds each pair's captions as token
  lists with <START> / <END>. Images: <root>/images/<split>/{A,B}/<name>.png."""
  import tarfile

  folder = path if os.path.isdir(path) else os.path.dirname(path)
  root = image_root or os.path.dirname(os.path.abspath(folder))
  packed = os.path.join(folder, "tokens.tar.gz")
  tokens: dict[str, bytes] = {}
  if not os.path.isdir(os.path.join(folder, "tokens")) and os.path.isfile(packed):
    try:
      with tarfile.open(packed) as tar:
        for member in tar:
          if member.isfile():
            tokens[os.path.basename(member.name)] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
      raise BadRecordError(f"{packed}: not a readable tar.gz ({type(e).__name__}: {e})") from None
  for split in ("train", "val", "test"):
    listing = os.path.join(folder, f"{split}.txt")
    if not os.path.isfile(listing):
      continue
    with open(listing, encoding="utf-8-sig") as f:
      names = [line.strip() for line in f if line.strip()]
    for line_no, name in enumerate(names, 1):
      where = f"{listing}:{line_no}"
      stem = os.path.splitext(name)[0] + ".txt"
      try:
        if stem in tokens:
          raw = tokens[stem]
        else:
          with open(os.path.join(folder, "tokens", stem), "rb") as t:
            raw = t.read()
        sentences = json.loads(raw)
      except (OSError, ValueError) as e:  # ValueError: JSON and UTF-8 errors
        yield BadRecordError(f"{where}: no readable token file {stem} ({type(e).__name__})")
        continue
      captions = [" ".join(w for w in sent if w not in ("<START>", "<END>"))
                  if isinstance(sent, list) and all(isinstance(w, str) for w in sent) else sent
                  for sent in (sentences if isinstance(sentences, list) else [sentences])]
      pair = tuple(_join(root, os.path.join("images", split, side, name)) for side in ("A", "B"))
      yield Record(key=f"{split}/{name}", split=split, images=pair, captions=tuple(captions),
                   where=where)


def read_image_folder(path: str, image_root: str | None = None,
                      split: str = "train") -> Iterator[Record | BadRecordError]:
  """<path>/<class>/<image>: one record per image file, labelled by its folder, no captions.

  A folder of split folders (<path>/{train,val,test}/<class>/...) gives each image its split."""
  path = os.path.abspath(path)
  subdirs = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
  if subdirs and set(subdirs) <= set(SPLITS):
    for s in subdirs:
      yield from read_image_folder(os.path.join(path, s), split=s)
    return
  for label in subdirs:
    for name in sorted(os.listdir(os.path.join(path, label))):
      if name.lower().endswith(IMAGE_EXTENSIONS):
        full = os.path.join(path, label, name)
        yield Record(key=f"{label}/{name}", split=split, images=(full,), label=label, where=full)


READERS: dict[str, Callable[..., Iterator]] = {
    "captions_jsonl": read_captions_jsonl,
    "karpathy": read_karpathy,
    "rsitmd": read_rsitmd,
    "nwpu": read_nwpu,
    "levir_cc": read_levir_cc,
    "levir_mci": read_levir_mci,
    "image_folder": read_image_folder,
}


def resolve_annotation(path: str, fmt: str) -> str:
  """A data set folder -> its annotation file (captions.jsonl) for formats that have one."""
  if fmt == "captions_jsonl" and os.path.isdir(path):
    return os.path.join(path, "captions.jsonl")
  return path


def read_source(fmt: str, path: str, image_root: str | None = None,
                **options) -> Iterator[Record | BadRecordError]:
  """Records of the annotation `path` in format `fmt` (a key of READERS)."""
  if fmt not in READERS:
    raise ConfigError(f"config key 'data.format': unknown annotation format {fmt!r}; choose from "
                      f"{sorted(READERS)}")
  path = resolve_annotation(path, fmt)
  if not os.path.exists(path):
    hint = (" (a folder of class folders is data.format='image_folder')"
            if fmt == "captions_jsonl" and os.path.isdir(os.path.dirname(path)) else "")
    raise NoRecordsError(f"annotation file or folder not found: {path}{hint}")
  if os.path.isfile(path) and not os.path.getsize(path):
    raise NoRecordsError(f"{path}: the annotation file is empty (0 bytes)")
  return READERS[fmt](path, image_root or None, **options)
