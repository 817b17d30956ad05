"""Whole RS-Synth splits and challenge subsets, rendered in chunks across worker processes.

Examples are pure functions of their index, so chunks render in any process and are stitched
back in index order: the result never depends on the number of workers.
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.pool
import os
import sys

import numpy as np

from rsjax.data.rs_synth.challenges import (CHALLENGES, ChallengeSpec, challenge_arrays,
                                            render_multiscale, render_small_objects,
                                            render_temporal)
from rsjax.data.rs_synth.scenes import SPLITS, SynthSpec, render_example


def make_pool(workers: int) -> multiprocessing.pool.Pool:
  """A worker pool. fork is cheapest, but forking a process that already runs JAX's threads can
  deadlock, so then workers come from a fork server that has this module (and with it the whole
  rs_synth package) preloaded."""
  if "fork" in multiprocessing.get_all_start_methods() and "jax" not in sys.modules:
    return multiprocessing.get_context("fork").Pool(workers)
  if "forkserver" in multiprocessing.get_all_start_methods():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", __name__])
    return ctx.Pool(workers)
  return multiprocessing.get_context("spawn").Pool(workers)


def worker_count(num_workers: int | None) -> int:
  """Processes to render in: os.cpu_count() when None, else at least 1."""
  return (os.cpu_count() or 1) if num_workers is None else max(1, int(num_workers))


def _map_chunks(fn, jobs: list, workers: int, pool: multiprocessing.pool.Pool | None):
  """fn over jobs, in order: in `pool`, in-process for 1 worker / 1 job, else in a new pool."""
  if pool is not None:
    return list(pool.imap(fn, jobs))
  if workers == 1 or len(jobs) <= 1:
    return list(map(fn, jobs))
  with make_pool(min(workers, len(jobs))) as own:
    return list(own.imap(fn, jobs))


def _chunk_bounds(n: int, workers: int) -> list[tuple[int, int]]:
  chunk = max(16, math.ceil(n / (workers * 8)))   # ~8 chunks per worker balances the load
  return [(s, min(n, s + chunk)) for s in range(0, n, chunk)]


# --------------------------------------------------------------------------------------------
# v1 splits.

def _render_range(args: tuple[SynthSpec, str, int, int]) -> tuple[np.ndarray, list[dict]]:
  spec, split, start, stop = args
  out = np.empty((stop - start, spec.image_size, spec.image_size, 3), np.uint8)
  records = []
  for i in range(start, stop):
    out[i - start], rec = render_example(spec, split, i)
    records.append(rec)
  return out, records


def generate_split(spec: SynthSpec, split: str, num_workers: int | None = None, *,
                   pool: multiprocessing.pool.Pool | None = None) -> tuple[np.ndarray, list[dict]]:
  """All images of a split [N, H, W, 3] uint8 plus their N records, in index order.

  Renders in a process pool of num_workers (default os.cpu_count()) processes, or in `pool` if
  given (load_or_generate shares one across splits); 1 worker renders in-process.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}, expected one of {SPLITS}")
  n = spec.num_examples(split)
  workers = worker_count(num_workers)
  jobs = [(spec, split, s, e) for s, e in _chunk_bounds(n, workers)]
  images = np.empty((n, spec.image_size, spec.image_size, 3), np.uint8)
  records: list[dict] = []
  for (_, _, s, e), (imgs, recs) in zip(jobs, _map_chunks(_render_range, jobs, workers, pool)):
    images[s:e] = imgs
    records.extend(recs)
  return images, records


# --------------------------------------------------------------------------------------------
# v2 challenge subsets.

def _render_challenge_range(args: tuple[ChallengeSpec, str, int, int]
                            ) -> tuple[dict[str, np.ndarray], list[dict]]:
  """Examples start..stop of a subset as stacked arrays + records (see generate_challenge)."""
  spec, subset, start, stop = args
  arrays: dict[str, list[np.ndarray]] = {}
  records: list[dict] = []
  for i in range(start, stop):
    if subset == "multiscale":
      img, rec = render_multiscale(spec, i)
      parts, recs = {"images": img[None]}, [rec]
    elif subset == "small_objects":
      pair, recs = render_small_objects(spec, i)
      parts = {"images": pair}
    else:
      before, after, rec = render_temporal(spec, i)
      parts, recs = {"before": before[None], "after": after[None]}, [rec]
    for k, v in parts.items():
      arrays.setdefault(k, []).append(v)
    records.extend(recs)
  return {k: np.concatenate(v) for k, v in arrays.items()}, records


def generate_challenge(spec: ChallengeSpec, subset: str, num_workers: int | None = None, *,
                       pool: multiprocessing.pool.Pool | None = None
                       ) -> tuple[dict[str, np.ndarray], list[dict]]:
  """One challenge subset as ({name: uint8 array}, records), in index order.

  multiscale: {"images": [N, H, W, 3]}, N records (4 captions each, labelled by level);
  small_objects: {"images": [2N, H, W, 3]} (original 2i, distractor 2i + 1), 2N records;
  temporal: {"before": [N, H, W, 3], "after": [N, H, W, 3]}, N records (3 change captions each).
  """
  if subset not in CHALLENGES:
    raise ValueError(f"unknown RS-Synth challenge subset {subset!r}, expected one of {CHALLENGES}")
  n, s = spec.num_examples, spec.image_size
  workers = worker_count(num_workers)
  jobs = [(spec, subset, a, b) for a, b in _chunk_bounds(n, workers)]
  per = 2 if subset == "small_objects" else 1
  arrays = {k: np.empty((per * n, s, s, 3), np.uint8) for k in challenge_arrays(subset)}
  records: list[dict] = []
  for (_, _, a, b), (parts, recs) in zip(jobs, _map_chunks(_render_challenge_range, jobs,
                                                            workers, pool)):
    for k, v in parts.items():
      arrays[k][per * a:per * b] = v
    records.extend(recs)
  return arrays, records
