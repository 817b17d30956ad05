"""grain train pipelines with checkpointable iterator state, and the skeleton every stream shares.

The skeleton (`sharded_batches`, `iterate`) turns any random-access source into endless batches:

  seeded shuffle (new order each epoch) -> repeat -> per-example maps keyed by the global stream
  position -> every process_count-th example for this process -> per-example maps keyed by this
  process's position -> batch -> prefetch (threads, or worker processes).

The in-memory path here (images [N, H, W, 3] uint8, token ids [N, C, L] for C captions each) draws
one caption per image per step; the streamed path (rsjax/data/stream.py) decodes and augments
encoded records. The iterator's state is a few integers that orbax saves with the train state, so
a resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import functools
from typing import Callable

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


MapChain = Callable[[grain.MapDataset], grain.MapDataset]  # adds per-example maps to a dataset


def sharded_batches(source, batch_size: int, seed: int, process_index: int = 0,
                    process_count: int = 1, global_maps: MapChain | None = None,
                    local_maps: MapChain | None = None) -> grain.MapDataset:
  """Endless batches of `batch_size` examples of this process from a random-access `source`.

  `global_maps` run before the per-process slice: their random draws follow an example's position
  in the global stream, so they do not depend on the process count. `local_maps` run after it,
  keyed by the position in this process's share. (The depth of each map in the chain seeds its
  draws, so moving a map between the two changes every batch.)
  """
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
  if global_maps is not None:
    ds = global_maps(ds)
  if process_count > 1:
    ds = ds[process_index::process_count]
  if local_maps is not None:
    ds = local_maps(ds)
  return ds.batch(batch_size, drop_remainder=True)


def iterate(ds: grain.MapDataset, num_workers: int = 0, prefetch: int = 4) -> grain.DatasetIterator:
  """A checkpointable iterator over `ds`: 2 prefetch threads buffering `prefetch` batches, or with
  num_workers > 0 that many worker processes (each prefetching `prefetch` batches).

  Worker processes need the program's entry point under `if __name__ == "__main__":` (the `rsjax`
  script has one); absl flags are marked parsed here, as grain's workers read them."""
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0 if num_workers else 2,
                                               prefetch_buffer_size=0 if num_workers else prefetch))
  if num_workers:
    from absl import flags  # only with worker processes
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; rsjax parses none
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=prefetch))
  return iter(it_ds)


def _pick_caption(record: dict, rng: np.random.Generator) -> dict:
  """Keeps one of the record's captions, drawn uniformly among non-empty ones."""
  tokens = record["tokens"]  # [C, L]
  valid = np.flatnonzero(tokens[:, 0] != 0)
  choice = valid[rng.integers(len(valid))] if len(valid) else 0
  return {**record, "tokens": tokens[choice]}


def _random_dihedral_image(record: dict, rng: np.random.Generator) -> dict:
  """One of the 8 flips / quarter turns of the image, drawn uniformly (captions untouched); the
  same one for every date of a sequence [T, H, W, 3]."""
  return {**record, "image": augment.random_dihedral(rng).apply_image(record["image"])}


def _corrupted_image(record: dict, rng: np.random.Generator, corruptions=None) -> dict:
  """The robust-training augmentation (a corruptions.TrainCorruptions), drawn from grain's rng;
  each date of a sequence [T, H, W, 3] drawn on its own (acquisitions differ in weather)."""
  image = record["image"]
  if image.ndim == 4:
    return {**record, "image": np.stack([corruptions.apply(d, rng) for d in image])}
  return {**record, "image": corruptions.apply(image, rng)}


def train_dataset(images: np.ndarray, tokens: np.ndarray, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1,
                  labels: np.ndarray | None = None, dihedral: bool = False,
                  corruptions=None, extras: dict[str, np.ndarray] | None = None
                  ) -> grain.MapDataset:
  """Endless batches {'image': [b, H, W, 3] uint8, 'tokens': [b, L] int32}, b = this process's share
  (plus 'label' [b] int32 when class labels [N] are given, and each of `extras` {name: [N, ...]}
  under its name). A change set's images are date sequences [N, T, H, W, 3].

  dihedral: a random flip / quarter turn of each image. The captions are not rewritten, so the
  caller makes sure they hold no direction words (rsjax.data.annotated checks this).
  corruptions: a corruptions.TrainCorruptions (data.corruptions), applied after the turn.

  Each process takes every `process_count`-th example of the shuffled stream, so the processes
  together cover a global batch of `batch_size * process_count` distinct examples.
  """
  arrays = dict(image=images, tokens=tokens, **(extras or {}))
  if labels is not None:
    arrays["label"] = np.asarray(labels, np.int32)

  def per_image(ds: grain.MapDataset) -> grain.MapDataset:
    ds = ds.random_map(_pick_caption)
    if dihedral:
      ds = ds.random_map(_random_dihedral_image)
    if corruptions is not None:
      ds = ds.random_map(functools.partial(_corrupted_image, corruptions=corruptions))
    return ds

  return sharded_batches(ArraySource(**arrays), batch_size, seed, process_index, process_count,
                         global_maps=per_image)


def train_iterator(images: np.ndarray, tokens: np.ndarray, global_batch: int, seed: int,
                   process_index: int = 0, process_count: int = 1,
                   labels: np.ndarray | None = None, dihedral: bool = False,
                   corruptions=None, extras: dict[str, np.ndarray] | None = None
                   ) -> grain.DatasetIterator:
  """A checkpointable iterator over `train_dataset`, with background prefetch threads."""
  return iterate(train_dataset(images, tokens, global_batch // process_count, seed, process_index,
                               process_count, labels, dihedral, corruptions, extras))
