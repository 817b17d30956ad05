"""RS-Synth temporal train / val / test splits: before/after pairs (or sequences of N dates) that a
change encoder can be trained on.

Each example is drawn like the v2 `temporal` challenge subset (challenges.render_temporal: buildings
added or removed in a grid cell, a road built across a third of the tile, or no change, the last
with probability `no_change`, 0.5 by default, as in LEVIR-CC), on its own
random stream per split (ids 20-22, apart from v1's 0-2 and the challenges' 10-12), so the splits
never share an example with each other or with the challenge subset. On top of the per-date
illumination and sensor noise that every pair has, each date after the first is shifted by up to
`max_shift_px` pixels (misregistration) and gets its own illumination gain and colour cast: a
change encoder must tell these nuisance differences from a change.

With dates = N > 2 the scene changes once, between date k-1 and date k (k drawn in 1..N-1, the
record's "change_date"); the captions describe the change from the first to the last date.
Cached under "<cache root>/rs_synth/v2-temporal-<hash>" (<split>_dates.npy [P, N, H, W, 3] uint8,
<split>.jsonl), written atomically like the v1 splits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np

from rsjax.data.rs_synth.cache import _cache_root, _generate_into, spec_hash
from rsjax.data.rs_synth.challenges import ChallengeSpec, render_temporal
from rsjax.data.rs_synth.pool import _chunk_bounds, _map_chunks, worker_count
from rsjax.data.rs_synth.scenes import check_image_size, finish
from rsjax.errors import ConfigError

TEMPORAL_SPLITS = ("train", "val", "test")
_STREAMS = {"train": 20, "val": 21, "test": 22}


@dataclasses.dataclass(frozen=True)
class TemporalSplitSpec:
  """Identity of the temporal splits; every field is part of their cache key."""
  version: str = "v2-temporal"
  seed: int = 0
  image_size: int = 64
  num_train: int = 8000
  num_val: int = 500
  num_test: int = 1000
  dates: int = 2
  max_shift_px: int = 1       # misregistration of each later date, in whole pixels (0: none)
  illumination: float = 0.1   # each later date's extra gain is drawn in 1 +- this
  no_change: float = 0.5      # share of sequences without change (about half of LEVIR-CC's)

  def __post_init__(self):
    check_image_size(self.image_size)
    for split in TEMPORAL_SPLITS:
      if self.num_examples(split) < 0:
        raise ConfigError(f"config key 'data.num_{split}': must be >= 0, got "
                          f"{self.num_examples(split)}")
    if not 2 <= self.dates <= 8:
      raise ConfigError(f"config key 'data.dates': 2 to 8 dates per sequence, got {self.dates}")
    if not 0 <= self.no_change <= 1:
      raise ConfigError(f"config key 'data.no_change': a share from 0 to 1, got {self.no_change}")
    if not 0 <= self.max_shift_px <= self.image_size // 8:
      raise ConfigError(f"config key 'data.max_shift_px': 0 to {self.image_size // 8} pixels, "
                        f"got {self.max_shift_px}")

  def num_examples(self, split: str) -> int:
    return int(getattr(self, f"num_{split}"))

  def change_probs(self) -> tuple[float, ...]:
    """Over grammar.CHANGE_TYPES: "none" with no_change, the three changes equally."""
    rest = (1.0 - self.no_change) / 3
    return (self.no_change, rest, rest, rest)


def _shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """[H, W, 3] translated by (dy, dx) pixels, edges repeated (a misregistered acquisition)."""
  if dy == 0 and dx == 0:
    return img
  h, w = img.shape[:2]
  pad = np.pad(img, ((abs(dy),) * 2, (abs(dx),) * 2, (0, 0)), mode="edge")
  return pad[abs(dy) - dy: abs(dy) - dy + h, abs(dx) - dx: abs(dx) - dx + w]


def render_temporal_example(spec: TemporalSplitSpec, split: str, index: int
                            ) -> tuple[np.ndarray, dict]:
  """One sequence [N, H, W, 3] uint8 (N = spec.dates) and its record (render_temporal's fields,
  plus "split", "dates", "change_date", "shifts" [N] of (dy, dx))."""
  cspec = ChallengeSpec(seed=spec.seed, image_size=spec.image_size, num_examples=0)
  before, after, record = render_temporal(cspec, index, stream=_STREAMS[split], raw=True,
                                          change_probs=spec.change_probs())
  seed = record.pop("_seed")
  rng = np.random.default_rng(seed + [4])
  n = spec.dates
  change_date = int(rng.integers(1, n)) if n > 2 else 1
  s = spec.max_shift_px
  shifts = [(0, 0)] + [tuple(int(v) for v in rng.integers(-s, s + 1, 2)) for _ in range(n - 1)]
  frames = []
  for t in range(n):
    img = before if t < change_date else after
    gain = (1.0 if t == 0 else rng.uniform(1 - spec.illumination, 1 + spec.illumination)
            * rng.uniform(0.97, 1.03, 3).astype(np.float32))
    frame = (_shift(img, *shifts[t]) * gain).astype(np.float32)
    frames.append(finish(frame, np.random.default_rng(seed + [2 + t])))
  record.update(subset="temporal", split=split, index=int(index), dates=n,
                change_date=change_date, shifts=[list(v) for v in shifts])
  return np.stack(frames), record


def _render_range(args: tuple[TemporalSplitSpec, str, int, int]) -> tuple[np.ndarray, list[dict]]:
  spec, split, start, stop = args
  s = spec.image_size
  out = np.empty((stop - start, spec.dates, s, s, 3), np.uint8)
  records = []
  for i in range(start, stop):
    out[i - start], rec = render_temporal_example(spec, split, i)
    records.append(rec)
  return out, records


def generate_temporal_split(spec: TemporalSplitSpec, split: str, num_workers: int | None = None,
                            *, pool=None) -> tuple[np.ndarray, list[dict]]:
  """A whole split: sequences [P, N, H, W, 3] uint8 and P records, in index order (the same for
  any number of workers)."""
  if split not in TEMPORAL_SPLITS:
    raise ValueError(f"unknown temporal split {split!r}, expected one of {TEMPORAL_SPLITS}")
  n, s = spec.num_examples(split), spec.image_size
  workers = worker_count(num_workers)
  jobs = [(spec, split, a, b) for a, b in _chunk_bounds(n, workers)]
  out = np.empty((n, spec.dates, s, s, 3), np.uint8)
  records: list[dict] = []
  for (_, _, a, b), (seqs, recs) in zip(jobs, _map_chunks(_render_range, jobs, workers, pool)):
    out[a:b] = seqs
    records.extend(recs)
  return out, records


def temporal_cache_path(spec: TemporalSplitSpec, cache_dir: str | os.PathLike | None = None) -> Path:
  return _cache_root(cache_dir) / f"{spec.version}-{spec_hash(spec)}"


def _write(tmp: Path, split: str, dates: np.ndarray, records: list[dict]) -> None:
  np.save(tmp / f"{split}_dates.npy", dates)
  with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in records)


def _read(path: Path, spec: TemporalSplitSpec):
  try:
    if json.loads((path / "spec.json").read_text()) != dataclasses.asdict(spec):
      return None
    out = {}
    for split in TEMPORAL_SPLITS:
      dates = np.load(path / f"{split}_dates.npy")
      with open(path / f"{split}.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
      if len(dates) != spec.num_examples(split) or len(records) != len(dates):
        return None
      out[split] = (dates, records)
    return out
  except (OSError, ValueError):
    return None


def load_or_generate_temporal(spec: TemporalSplitSpec, cache_dir: str | os.PathLike | None = None,
                              progress: bool = True) -> dict[str, tuple[np.ndarray, list[dict]]]:
  """{split: (sequences [P, N, H, W, 3] uint8, records)} from the cache, generated if needed."""
  path = temporal_cache_path(spec, cache_dir)
  cached = _read(path, spec)
  if cached is not None:
    if progress:
      print(f"rs_synth: loaded temporal splits from {path}", file=sys.stderr)
    return cached
  out = _generate_into(path, spec, TEMPORAL_SPLITS, generate_temporal_split, _write,
                       lambda dates, records: f"{len(records)} sequences of {spec.dates} dates",
                       progress)
  if progress:
    print(f"rs_synth: cached temporal splits at {path}", file=sys.stderr)
  return out

