"""grain input pipelines with checkpointable iterator state.

An in-memory image-caption set (images [N, H, W, 3] uint8, token ids [N, C, L] for C captions each)
becomes an endless stream of batches: a seeded shuffle that changes every epoch, one caption drawn per
image per step, per-process sharding for multi-host runs, then batching. The iterator's state is a few
integers that orbax saves with the train state, so a resumed run sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import grain
import numpy as np

from rsjax.data import augment


class ArraySource:
  """Random access to aligned in-memory arrays; record i = {name: array[i]}."""

  def __init__(self, **arrays: np.ndarray):
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) != 1:
      raise ValueError(f"arrays have different lengths: { {k: len(a) for k, a in arrays.items()} }")
    self._arrays = arrays
    self._len = lengths.pop()

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict:
    return {k: a[index] for k, a in self._arrays.items()}


def _pick_caption(record: dict, rng: np.random.Generator) -> dict:
  """Keeps one of the record's captions, drawn uniformly among non-empty ones."""
  tokens = record["tokens"]  # [C, L]
  valid = np.flatnonzero(tokens[:, 0] != 0)
  choice = valid[rng.integers(len(valid))] if len(valid) else 0
  return {**record, "tokens": tokens[choice]}


def _random_dihedral_image(record: dict, rng: np.random.Generator) -> dict:
  """One of the 8 flips / quarter turns of the image, drawn uniformly (captions untouched)."""
  return {**record, "image": augment.random_dihedral(rng).apply_image(record["image"])}


def train_dataset(images: np.ndarray, tokens: np.ndarray, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1,
                  labels: np.ndarray | None = None, dihedral: bool = False) -> grain.MapDataset:
  """Endless batches {'image': [b, H, W, 3] uint8, 'tokens': [b, L] int32}, b = this process's share
  (plus 'label' [b] int32 when class labels [N] are given).

  dihedral: a random flip / quarter turn of each image. The captions are not rewritten, so the
  caller makes sure they hold no direction words (rsjax.data.annotated checks this).

  Each process takes every `process_count`-th example of the shuffled stream, so the processes
  together cover a global batch of `batch_size * process_count` distinct examples.
  """
  arrays = dict(image=images, tokens=tokens)
  if labels is not None:
    arrays["label"] = np.asarray(labels, np.int32)
  ds = grain.MapDataset.source(ArraySource(**arrays))
  ds = ds.seed(seed).shuffle().repeat(None)
  ds = ds.random_map(_pick_caption)
  if dihedral:
    ds = ds.random_map(_random_dihedral_image)
  if process_count > 1:
    ds = ds[process_index::process_count]
  return ds.batch(batch_size, drop_remainder=True)


def train_iterator(images: np.ndarray, tokens: np.ndarray, global_batch: int, seed: int,
                   process_index: int = 0, process_count: int = 1,
                   labels: np.ndarray | None = None,
                   dihedral: bool = False) -> grain.DatasetIterator:
  """A checkpointable iterator over `train_dataset`, with background prefetch threads."""
  ds = train_dataset(images, tokens, global_batch // process_count, seed, process_index,
                     process_count, labels, dihedral)
  read = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)
  return iter(ds.to_iter_dataset(read))
