"""RS-Synth's on-disk cache: where a spec's splits / challenge subsets live, load or generate.

<cache_dir or $RSJAX_CACHE or ~/.cache/rsjax>/rs_synth/ holds one folder per spec:
"v1-<hash>" (images_<split>.npy [N, H, W, 3] uint8, captions_<split>.jsonl, spec.json) and
"v2-challenges-<hash>" (<subset>_<array>.npy, <subset>.jsonl, spec.json). The hash is of the
spec's fields and values only, so moving code never invalidates a cache. A folder is written
under a temporary name and renamed into place (rsjax.atomic.atomic_dir): a killed generation
leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from rsjax.atomic import atomic_dir
from rsjax.data.rs_synth.challenges import CHALLENGES, ChallengeSpec, challenge_arrays
from rsjax.data.rs_synth.pool import generate_challenge, generate_split, make_pool, worker_count
from rsjax.data.rs_synth.scenes import SPLITS, SynthSpec


def spec_hash(spec: SynthSpec | ChallengeSpec) -> str:
  """First 12 hex digits of sha256 over the spec's fields as sorted-key JSON."""
  blob = json.dumps(dataclasses.asdict(spec), sort_keys=True).encode()
  return hashlib.sha256(blob).hexdigest()[:12]


def cache_path(spec: SynthSpec, cache_dir: str | os.PathLike | None = None) -> Path:
  """<cache_dir or $RSJAX_CACHE or ~/.cache/rsjax>/rs_synth/<version>-<hash of spec>."""
  return _cache_root(cache_dir) / f"{spec.version}-{spec_hash(spec)}"


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
  root = Path(cache_dir or os.environ.get("RSJAX_CACHE") or Path.home() / ".cache" / "rsjax")
  return root.expanduser() / "rs_synth"


def _read_cache(path: Path, spec: SynthSpec) -> dict[str, tuple[np.ndarray, list[dict]]] | None:
  """The cached splits, or None if the directory is missing, foreign or incomplete."""
  try:
    if json.loads((path / "spec.json").read_text()) != dataclasses.asdict(spec):
      return None
    out = {}
    for split in SPLITS:
      images = np.load(path / f"images_{split}.npy", mmap_mode=None)
      with open(path / f"captions_{split}.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
      if len(images) != spec.num_examples(split) or len(records) != len(images):
        return None
      out[split] = (images, records)
    return out
  except (OSError, ValueError):
    return None


def _write_split(tmp: Path, split: str, images: np.ndarray, records: list[dict]) -> None:
  np.save(tmp / f"images_{split}.npy", images)
  with open(tmp / f"captions_{split}.jsonl", "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, separators=(",", ":")) + "\n")


def _write_challenge(tmp: Path, subset: str, arrays: dict[str, np.ndarray],
                     records: list[dict]) -> None:
  for k, v in arrays.items():
    np.save(tmp / f"{subset}_{k}.npy", v)
  with open(tmp / f"{subset}.jsonl", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in records)


def _generate_into(path: Path, spec, names, generate, write, count, progress: bool) -> dict:
  """{name: generate(spec, name)} for each name, with one worker pool for all of them, written by
  `write` into a staging folder that is renamed to `path` when complete (atomic_dir)."""
  workers = worker_count(None)
  pool = make_pool(workers) if workers > 1 else None
  out = {}
  try:
    with atomic_dir(path, replace=True) as staging:   # replaces a stale/incomplete copy
      tmp = Path(staging)
      for name in names:
        t0 = time.perf_counter()
        out[name] = generate(spec, name, pool=pool)
        write(tmp, name, *out[name])
        if progress:
          print(f"rs_synth: generated {name}: {count(*out[name])} at {spec.image_size}px "
                f"in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
      (tmp / "spec.json").write_text(json.dumps(dataclasses.asdict(spec), indent=1))
  finally:
    if pool is not None:
      pool.terminate()
  return out


def load_or_generate(spec: SynthSpec, cache_dir: str | os.PathLike | None = None,
                     progress: bool = True) -> dict[str, tuple[np.ndarray, list[dict]]]:
  """{split: (images [N, H, W, 3] uint8, records)} from the cache, generating it if needed.

  The cache directory is written under a temporary name and renamed into place (atomic_dir).
  """
  path = cache_path(spec, cache_dir)
  cached = _read_cache(path, spec)
  if cached is not None:
    if progress:
      sizes = ", ".join(f"{s} {len(cached[s][1])}" for s in SPLITS)
      print(f"rs_synth: loaded {sizes} from {path}", file=sys.stderr)
    return cached
  out = _generate_into(path, spec, SPLITS, generate_split, _write_split,
                       lambda images, records: f"{len(images)} images", progress)
  if progress:
    print(f"rs_synth: cached at {path}", file=sys.stderr)
  return out


def challenge_cache_path(spec: ChallengeSpec, cache_dir: str | os.PathLike | None = None) -> Path:
  """<cache root>/rs_synth/<version>-challenges-<hash of spec>, apart from the v1 split caches."""
  return _cache_root(cache_dir) / f"{spec.version}-challenges-{spec_hash(spec)}"


def _read_challenges(path: Path, spec: ChallengeSpec):
  """The cached subsets, or None if the directory is missing, foreign or incomplete."""
  try:
    if json.loads((path / "spec.json").read_text()) != dataclasses.asdict(spec):
      return None
    out = {}
    for subset in CHALLENGES:
      per = 2 if subset == "small_objects" else 1
      arrays = {k: np.load(path / f"{subset}_{k}.npy") for k in challenge_arrays(subset)}
      with open(path / f"{subset}.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
      if (any(len(a) != per * spec.num_examples for a in arrays.values())
          or len(records) != per * spec.num_examples):
        return None
      out[subset] = (arrays, records)
    return out
  except (OSError, ValueError):
    return None


def load_or_generate_challenges(spec: ChallengeSpec, cache_dir: str | os.PathLike | None = None,
                                progress: bool = True
                                ) -> dict[str, tuple[dict[str, np.ndarray], list[dict]]]:
  """{subset: (arrays, records)} for all CHALLENGES (see generate_challenge), cached on disk
  atomically like the v1 splits but under their own key (challenge_cache_path)."""
  path = challenge_cache_path(spec, cache_dir)
  cached = _read_challenges(path, spec)
  if cached is not None:
    if progress:
      print(f"rs_synth: loaded challenge subsets from {path}", file=sys.stderr)
    return cached
  out = _generate_into(path, spec, CHALLENGES, generate_challenge, _write_challenge,
                       lambda arrays, records: f"{len(records)} records", progress)
  if progress:
    print(f"rs_synth: cached challenge subsets at {path}", file=sys.stderr)
  return out
