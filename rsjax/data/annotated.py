"""`data.name="annotated"`: train and evaluate straight from an annotation file and its images.

Reads any format of rsjax.data.sources (captions.jsonl by default), checks every record, decodes
and resizes the images into memory, and tokenizes the captions. Meant for sets that fit in memory
(the ../shared/data samples, UCM, Sydney, RSICD at small sizes); larger sets go through
`rsjax data prepare` and `data.name="tfds"`.

Config keys (data section):
  path               data set folder (captions.jsonl inside) or annotation file
  format             captions_jsonl | karpathy | rsitmd | nwpu | levir_cc | image_folder
  image_root         folder the image paths are relative to ("" -> the annotation file's folder)
  caption_field      captions.jsonl field with the captions (UCM/Sydney also have "captions_corrected")
  label_prompt       "" or a template such as "an aerial photograph of {label}", or a tuple of
                     them: captions for label-only sets (one per template). Such sets also give
                     the trainer each image's class (train.positives="label") and the eval splits
                     labels["scene"] (rsjax.evaluation.labels)
  image_size         side in pixels after resizing
  bands              () keeps RGB / all bands, or band indices, e.g. (3, 2, 1)
  max_value          white level of non-uint8 images (0 -> the dtype's maximum)
  train_split        split to train on; every other split present is available for evaluation
  skip_bad_records   skip (and list) bad records instead of stopping on them (all are listed)
  tokenizer_path     "" -> a SentencePiece model trained on the train captions in the workdir
  memory_dihedral    with stream=False: random flips / quarter turns of the in-memory train
                     images (captions are kept as they are, so the loader refuses captions whose
                     direction words a turn would change)
  stream             False: train images decoded once into memory, no other augmentation; True: read
                     through the grain pipeline with augment / num_workers / prefetch as for
                     data.name="tfds" (rsjax/data/prepared.py, rsjax/data/stream.py)
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np

from rsjax.data import decode, records, sources, stream
from rsjax.data.augment import Dihedral, rewrite_caption
from rsjax.data.tokenize import eval_split, tokenize_per_image, tokenizer_for
from rsjax.data.types import RetrievalData
from rsjax.console import log
from rsjax.errors import ConfigError


SKIP_HINT = "set data.skip_bad_records=True to skip bad records and list them"


def read_checked(data: ml_collections.ConfigDict) -> tuple[list[records.Record], records.BadRecords]:
  """The configured source's records that pass the checks, and every one that does not."""
  options = {}
  if data.format == "captions_jsonl":
    options["caption_field"] = data.get("caption_field", "captions")
  raw = list(sources.read_source(data.format, data.path, data.get("image_root", "") or None,
                                 **options))
  templates = prompt_templates(data)
  if templates:  # label-only sets (RSSCN7, image folders): captions from the class name
    raw = [r if isinstance(r, records.BadRecordError) or r.captions or r.label is None
           else _with_captions(r, tuple(t.format(label=r.label) for t in templates)) for r in raw]
  return records.collect(raw)


def prompt_templates(data: ml_collections.ConfigDict) -> tuple[str, ...]:
  """data.label_prompt as a tuple of templates (a single string is one template)."""
  prompt = data.get("label_prompt", "")
  templates = (prompt,) if isinstance(prompt, str) else tuple(prompt)
  templates = tuple(t for t in templates if t)
  for t in templates:
    if "{label}" not in t:
      raise ConfigError(f"config key 'data.label_prompt': template {t!r} has no '{{label}}'")
  return templates


def check_turn_free(captions: list[list[str]], path: str) -> None:
  """Raises when a flip or quarter turn would change a caption's meaning (data.memory_dihedral
  keeps the captions as they are)."""
  turns = [Dihedral(flip, k) for flip in (False, True) for k in range(4)][1:]
  for caps in captions:
    for c in caps:
      if any(rewrite_caption(c, t) != c for t in turns):
        raise ConfigError(f"config key 'data.memory_dihedral': caption {c!r} of {path} has "
                         "direction words a flip or turn would change; use data.stream=True "
                         "(caption-aware augmentation) instead")


def class_labels(by_split: dict[str, list[records.Record]]):
  """(class names sorted, {split: [N] int32 class ids}) when every record has a label, else None."""
  if not all(r.label is not None for rs in by_split.values() for r in rs):
    return None
  names = tuple(sorted({str(r.label) for rs in by_split.values() for r in rs}))
  index = {n: i for i, n in enumerate(names)}
  return names, {s: np.asarray([index[str(r.label)] for r in rs], np.int32)
                 for s, rs in by_split.items()}


def _with_captions(record: records.Record, captions: tuple[str, ...]) -> records.Record:
  return dataclasses.replace(record, captions=captions)


def decode_records(recs: list[records.Record], data: ml_collections.ConfigDict,
                   bad: records.BadRecords) -> tuple[np.ndarray, list[records.Record]]:
  """Decodes and resizes each record's image -> ([N, S, S, C] uint8, the records kept); a record
  that cannot be decoded is added to `bad`."""
  size, bands = data.image_size, tuple(data.get("bands", ())) or None
  max_value = data.get("max_value", 0) or None
  images, kept = [], []
  for r in recs:
    try:
      if len(r.images) != 1:
        raise records.BadRecordError("an image pair; the image-text trainer takes single images "
                                     "(change pairs need the temporal pipeline)")
      images.append(decode.decode_resized(decode.read_bytes(r.images[0]), size, r.images[0],
                                          bands, max_value))
    except records.BadRecordError as e:
      bad.add(r.where, type(e)(f"{r.where} [{r.key}]: {e}"), split=r.split)
      continue
    kept.append(r)
  if not images:
    return np.zeros((0, size, size, 3), np.uint8), kept
  return np.stack(images), kept


def by_split(recs: list[records.Record]) -> dict[str, list[records.Record]]:
  out: dict[str, list[records.Record]] = {}
  for r in recs:
    out.setdefault(r.split, []).append(r)
  return out


def check_splits(splits: dict[str, list[records.Record]], bad: records.BadRecords,
                 data: ml_collections.ConfigDict) -> None:
  """Refuses a set with nothing (left) in its train split, saying whether bad records are why."""
  train_split = data.get("train_split", "train")
  if splits.get(train_split):
    return
  if not splits and not len(bad):
    records.require_records([], bad, data.path)
  in_train = bad.in_split(train_split)
  if len(in_train) or (not splits and len(bad)):
    records.require_records([], in_train if len(in_train) else bad, data.path,
                            f"split {train_split!r}")
  raise ConfigError(f"config key 'data.train_split': no records in split {train_split!r} of "
                    f"{data.path} (splits present: {sorted(splits)})")


def validated(data: ml_collections.ConfigDict, workdir: str | None = None
              ) -> tuple[dict[str, tuple[np.ndarray, list[records.Record]]], records.BadRecords]:
  """The one validation of an annotated set: every record checked and every image decoded in one
  pass, then all bad ones raised together (or, with data.skip_bad_records, listed and left out;
  with a `workdir`, all of them also in WORKDIR/bad_records.json).
  -> ({split: (images [N, S, S, C] uint8, its records in file order)}, the bad records)."""
  recs, bad = read_checked(data)
  arrays = {s: decode_records(rs, data, bad) for s, rs in by_split(recs).items()}
  listing = os.path.join(workdir, "bad_records.json") if workdir else None
  records.check_bad(bad, data.get("skip_bad_records", False), data.path, SKIP_HINT, listing)
  check_splits({s: kept for s, (_, kept) in arrays.items() if kept}, bad, data)
  return {s: a for s, a in arrays.items() if len(a[1])}, bad


def load_annotated(data: ml_collections.ConfigDict, workdir: str, context_length: int,
                   vocab_size: int, progress: bool = True) -> RetrievalData:
  """The set in memory, validated (see `validated`), tokenized, with its eval splits."""
  arrays, _ = validated(data, workdir)
  train_split = data.get("train_split", "train")
  captions = {s: [list(r.captions) for r in kept] for s, (_, kept) in arrays.items()}
  train_captions = [c for caps in captions[train_split] for c in caps]
  tokenizer = tokenizer_for(train_captions, workdir, vocab_size, data.get("tokenizer_path", ""))
  eval_splits = {s: eval_split(tokenizer, arrays[s][0], captions[s], context_length)
                 for s in arrays if s != train_split}
  if data.get("stream", False):  # augmented batches from the files, through grain
    spec = stream.spec_from_config(data, context_length,
                                   data.get("tokenizer_path", "") or tokenizer.path)
    log(f"data {data.path}: train {len(arrays[train_split][1])} images (streamed, augmented), "
        + ", ".join(f"{s} {len(e.images)} images" for s, e in eval_splits.items()))
    return stream.streaming_data(stream.FileSource(arrays[train_split][1]), spec, data,
                                 eval_splits, tokenizer)
  log(f"data {data.path}: " + ", ".join(f"{s} {len(a)} images" for s, (a, _) in arrays.items()))
  if data.get("memory_dihedral", False):
    check_turn_free(captions[train_split], data.path)
  labelled = class_labels({s: kept for s, (_, kept) in arrays.items()})
  names, train_labels = (), None
  if labelled is not None:
    names, ids = labelled
    train_labels = ids[train_split]
    for s, split in eval_splits.items():  # per caption, as the eval splits are laid out
      split.labels["scene"] = ids[s][split.text_to_image]
  return RetrievalData(
      train_images=arrays[train_split][0],
      train_tokens=tokenize_per_image(tokenizer, captions[train_split], context_length),
      eval_splits=eval_splits, tokenizer=tokenizer, train_labels=train_labels, class_names=names,
      train_dihedral=bool(data.get("memory_dihedral", False)))
