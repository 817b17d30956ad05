"""grain train pipeline over encoded records: decode, augment, sample a caption, tokenize, batch.

The source is any random-access sequence of records {"image": encoded bytes, "captions": [text],
...}: a prepared TFDS set (`builder.as_data_source(split)`) or image files read on demand
(`FileSource`). The stream is

  seeded shuffle (new order each epoch) -> every process_count-th record for this process ->
  per record: one caption drawn, image decoded, random resized crop, caption-aware flip/rotation,
  optional colour jitter -> tokenize -> batch -> worker processes with prefetch.

Every random draw comes from grain's per-record generator (seed, record position), so the stream
is a pure function of the seed, and the iterator's state (a position, saved by orbax through
grain.checkpoint) restores it exactly, with or without worker processes.

The shuffle / slice / batch / prefetch skeleton is rsjax.data.pipeline's (`sharded_batches`,
`iterate`), shared with the in-memory path. `spec_from_config` and `streaming_data` wrap a
source as the streamed RetrievalData that the loaders (annotated.py, prepared.py) return.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import grain
import ml_collections
import numpy as np

from rsjax.data import augment, corruptions, decode, pipeline, records
from rsjax.data.tokenize import tokenizer_for
from rsjax.data.types import StreamingRetrievalData


@dataclasses.dataclass(frozen=True)
class StreamSpec:
  """What the per-record work does. Picklable: it travels to the worker processes."""
  image_size: int
  context_length: int
  tokenizer_path: str
  augment: augment.AugmentConfig = augment.AugmentConfig()
  bands: tuple[int, ...] | None = None
  max_value: float | None = None
  label_prompt: str = ""  # captions for label-only records, e.g. "an aerial image of {label}"
  corruptions: object = None  # corruptions.TrainCorruptions (data.corruptions), or None


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else value


class FileSource:
  """Records whose images are read from disk on access: [records.Record] -> record dicts."""

  def __init__(self, recs: Sequence[records.Record]):
    self._recs = list(recs)

  def __len__(self) -> int:
    return len(self._recs)

  def __getitem__(self, index: int) -> dict:
    r = self._recs[index]
    return {"key": r.key, "image": decode.read_bytes(r.images[0]), "captions": list(r.captions),
            "label": r.label or ""}


class DecodeAugment(grain.transforms.RandomMap):
  """record -> {"image": [S, S, C] uint8, "caption": str}: one caption, decoded and augmented."""

  def __init__(self, spec: StreamSpec):
    self.spec = spec

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    s = self.spec
    captions = [_text(c) for c in record["captions"]]
    if not captions and s.label_prompt and _text(record.get("label", "")):
      captions = [s.label_prompt.format(label=_text(record["label"]))]
    if not captions:
      raise records.EmptyCaptionsError(f"record {_text(record.get('key', '?'))!r} has no captions")
    caption = captions[int(rng.integers(len(captions)))]
    name = _text(record.get("key", "<record>"))
    image = box = None
    if s.bands is None:  # JPEG / PNG stay in PIL through crop, resize and turns
      image, box = decode.open_rgb_cropped(record["image"], s.image_size, rng,
                                           s.augment.crop_scale, name)
    if image is None:  # TIFF (any bit depth, any bands) or a band choice
      image = decode.to_uint8(decode.decode(record["image"], name, s.bands), s.max_value)
    image, caption = augment.augment_pair(image, caption, s.image_size, rng, s.augment, box)
    if s.corruptions is not None:
      image = s.corruptions.apply(image, rng)
    return {"image": image, "caption": caption}


class Tokenize(grain.transforms.Map):
  """{"caption": str} -> {"tokens": [L] int32}; the tokenizer (a SentencePiece model path, or
  "clip_bpe") loads once per process."""

  def __init__(self, tokenizer_path: str, context_length: int):
    self.tokenizer_path = tokenizer_path
    self.context_length = context_length
    self._tokenizer = None

  def __getstate__(self):
    return {"tokenizer_path": self.tokenizer_path, "context_length": self.context_length,
            "_tokenizer": None}

  def map(self, element: dict) -> dict:
    if self._tokenizer is None:  # the same dispatch as the trainer's (SentencePiece, clip_bpe)
      self._tokenizer = tokenizer_for([], "", 0, self.tokenizer_path)
    tokens = self._tokenizer.encode([element["caption"]], self.context_length)[0]
    return {"image": element["image"], "tokens": tokens}


def train_dataset(source, spec: StreamSpec, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """Endless batches {'image': [b, S, S, C] uint8, 'tokens': [b, L] int32} of this process."""

  def per_record(ds: grain.MapDataset) -> grain.MapDataset:  # only this process's records
    ds = ds.random_map(DecodeAugment(spec))
    return ds.map(Tokenize(spec.tokenizer_path, spec.context_length))

  return pipeline.sharded_batches(source, batch_size, seed, process_index, process_count,
                                  local_maps=per_record)


def train_iterator(source, spec: StreamSpec, global_batch: int, seed: int,
                   process_index: int = 0, process_count: int = 1, num_workers: int = 0,
                   prefetch: int = 4) -> grain.DatasetIterator:
  """A checkpointable iterator over `train_dataset`; with num_workers > 0, batches are made in
  that many worker processes (each prefetching `prefetch` batches)."""
  return pipeline.iterate(train_dataset(source, spec, global_batch // process_count, seed,
                                        process_index, process_count), num_workers, prefetch)


def spec_from_config(data: ml_collections.ConfigDict, context_length: int,
                     tokenizer_path: str) -> StreamSpec:
  """The StreamSpec of a data config section (image_size, augment, bands, max_value,
  label_prompt)."""
  a = data.get("augment", {})
  return StreamSpec(
      image_size=data.image_size, context_length=context_length, tokenizer_path=tokenizer_path,
      augment=augment.AugmentConfig(crop_scale=(a.get("crop_scale_min", 0.5), 1.0),
                                    dihedral=a.get("dihedral", True),
                                    color_jitter=a.get("color_jitter", 0.0)),
      bands=tuple(data.get("bands", ())) or None, max_value=data.get("max_value", 0) or None,
      label_prompt=data.get("label_prompt", ""), corruptions=corruptions.from_config(data))


def streaming_data(train_source, spec: StreamSpec, data: ml_collections.ConfigDict,
                   eval_splits: dict, tokenizer) -> StreamingRetrievalData:
  """Wraps a train source (records with encoded images) as a streamed RetrievalData."""

  def make_iterator(global_batch, seed, process_index, process_count):
    return train_iterator(train_source, spec, global_batch, seed, process_index, process_count,
                          num_workers=data.get("num_workers", 0), prefetch=data.get("prefetch", 4))

  size = data.image_size
  return StreamingRetrievalData(
      train_images=np.zeros((0, size, size, 3), np.uint8),
      train_tokens=np.zeros((0, 1, spec.context_length), np.int32),
      eval_splits=eval_splits, tokenizer=tokenizer, make_iterator=make_iterator)
