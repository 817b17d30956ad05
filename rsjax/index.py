"""Archive indexes: dense embeddings and bit-packed hash codes of every image, with metadata.

On disk an index is a folder:

  index.json                 format, version, model identity (config, checkpoint, step, parameter
                             digest, tokenizer), dense dtype and dimension, code bits, the chunks
                             and, where built, the approximate-search file (`ann`)
  chunk_00000.dense.npy      one set per build or append: dense [n, E] float16|float32 (unit norm)
  chunk_00000.codes.npy      codes [n, K/8] uint8 (np.packbits order; absent without a hashing head)
  chunk_00000.geo.npy        footprints [n, 4] float64 (west, south, east, north in degrees, NaN
                             where unknown; absent when no image of the chunk is georeferenced)
  chunk_00000.json           the n image paths of the chunk (a pair index: [before, after] each)
  ann.usearch                (rsjax index --ann) an HNSW graph over all dense rows, rsjax/search_ann.py

The .npy files are memory-mapped, not read: an index larger than RAM is searched chunk by chunk
by the same kernels, and only the pages a search touches are read. Version 1 indexes (one .npz
per chunk) are still read, into memory.

Appending adds a chunk, so an append costs only what it adds (and drops a stale `ann`).
index.json records every file's size and CRC-32; loading checks them, the shapes and the dtypes,
and refuses a file that differs with a message naming it. Appending with another model than the
index was built with is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib

import numpy as np

from rsjax import atomic
from rsjax.errors import InputError

FORMAT = "rsjax-index"
VERSION = 2
READABLE_VERSIONS = (1, 2)
DENSE_DTYPES = {"float16": np.float16, "float32": np.float32}


class IndexFileError(InputError):
  """An index folder is missing, corrupt, or does not match the model or data offered to it."""


def _crc32(path: str) -> str:
  crc = 0
  with open(path, "rb") as f:
    while block := f.read(1 << 24):
      crc = zlib.crc32(block, crc)
  return f"{crc:08x}"


def params_digest(params) -> str:
  """A digest of every parameter's name, shape, dtype and bytes: the model's identity."""
  import jax

  from rsjax.parallel import to_host  # gathers a parameter sharded over several processes

  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    arr = to_host(leaf) if isinstance(leaf, jax.Array) else np.asarray(leaf)
    h.update(jax.tree_util.keystr(path).encode())
    h.update(str((arr.shape, arr.dtype.str)).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()[:32]


def file_digest(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:32]


class Index:
  """A loaded index: its rows in chunks (memory maps of the chunk files), searched chunk by chunk.

  dense [N, E] float16/float32 and codes [N, K/8] uint8 (or None) are the whole arrays, made on
  first use (a copy in memory when there are several chunks: for device search and tests; the
  host search never needs them). footprints [N, 4] float64 (west, south, east, north; NaN
  unknown) or None. `chunks`: [(dense [n, E], codes [n, K/8] or None)], default one chunk."""

  def __init__(self, meta: dict, paths: list[str], dense: np.ndarray | None = None,
               codes: np.ndarray | None = None, footprints: np.ndarray | None = None,
               chunks: list[tuple[np.ndarray, np.ndarray | None]] | None = None):
    self.meta, self.paths, self.footprints = meta, paths, footprints
    self.chunks = chunks if chunks is not None else [(dense, codes)]
    self.starts = np.cumsum([0] + [len(c[0]) for c in self.chunks])  # first row of each chunk
    self._dense, self._codes = dense, codes
    self._words: list | None = None
    self.ann = None  # an rsjax.search_ann.AnnIndex, attached by search_ann.load

  def __len__(self) -> int:
    return len(self.paths)

  @property
  def pairs(self) -> bool:
    """Whether the rows are before/after pairs (a change encoder's index) or single images."""
    return bool(self.paths) and isinstance(self.paths[0], tuple)

  @property
  def bits(self) -> int:
    return int(self.meta["bits"])

  @property
  def dense(self) -> np.ndarray | None:
    if self._dense is None and self.chunks[0][0] is not None:
      parts = [c[0] for c in self.chunks]
      self._dense = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return self._dense

  @property
  def codes(self) -> np.ndarray | None:
    if self._codes is None and self.chunks[0][1] is not None:
      parts = [c[1] for c in self.chunks]
      self._codes = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return self._codes

  def _no_codes(self):
    return IndexFileError(f"index {self.meta.get('path')} has no binary codes (model without a "
                          "hashing head); search it densely")

  @property
  def words(self) -> np.ndarray:
    """The codes as uint64 words [N, ceil(K/64)] for popcount search (made once)."""
    from rsjax import search

    if self.codes is None:
      raise self._no_codes()
    if len(self.chunks) == 1:
      return self.chunk_words()[0]
    return search.pack_words(self.codes)

  def chunk_words(self) -> list[np.ndarray]:
    """Per chunk, codes as uint64 words [n, W]: a view of the memory map where K is a multiple of
    64 (no copy), else a padded copy."""
    from rsjax import search

    if self.chunks[0][1] is None:
      raise self._no_codes()
    if self._words is None:
      self._words = [search.pack_words(c[1]) for c in self.chunks]
    return self._words

  def dense_rows(self, rows: np.ndarray) -> np.ndarray:
    """Dense vectors of global rows [...] (-1: zeros) -> [..., E] float32, read chunk by chunk."""
    rows = np.asarray(rows, np.int64)
    flat = rows.reshape(-1)
    out = np.zeros((len(flat), int(self.meta.get("dim") or self.chunks[0][0].shape[1])), np.float32)
    which = np.searchsorted(self.starts, flat, side="right") - 1
    for c, (dense, _) in enumerate(self.chunks):
      sel = np.flatnonzero((which == c) & (flat >= 0))
      if len(sel):
        out[sel] = dense[flat[sel] - self.starts[c]]
    return out.reshape(*rows.shape, -1)

  def code_rows(self, rows: np.ndarray) -> np.ndarray:
    """Packed codes of global rows [R] -> [R, K/8] uint8."""
    if self.chunks[0][1] is None:
      raise self._no_codes()
    rows = np.asarray(rows, np.int64)
    which = np.searchsorted(self.starts, rows, side="right") - 1
    return np.stack([self.chunks[c][1][r - self.starts[c]] for c, r in zip(which, rows)])

  def search(self, query_dense: np.ndarray | None = None, query_codes: np.ndarray | None = None,
             k: int = 20, binary: bool = False, rerank: int = 0, sharded=None,
             subset: np.ndarray | None = None, ann: bool = False):
    """Top-k rows for a batch of queries: dense [Q, E] and/or packed codes [Q, K/8].

    binary: Hamming ranking by popcount; with rerank = R >= k, the R nearest codes are re-ordered
    by dense score. `sharded`: an rsjax.search.ShardedSearch over this index's rows (device
    search) instead of the host kernels. `subset`: search only these rows (sorted [S] int64, a
    geographic filter). `ann`: dense search through the approximate graph (search_ann.load).
    Returns (scores [Q, k], rows [Q, k]); Hamming distances are the scores of a binary search
    without rerank; rows past the candidates hold -1."""
    from rsjax import search

    if binary:
      if query_codes is None:
        raise ValueError("binary search needs query codes")
      if self.chunks[0][1] is None:
        raise self._no_codes()
      qw = search.pack_words(np.atleast_2d(query_codes))
      depth = max(k, rerank)
      if sharded is not None:
        dist, rows = sharded.hamming_topk(qw, depth)
      else:
        dist, rows = self._per_chunk(
            lambda words, q, kk: search.hamming_topk(words, q, kk, self.bits),
            self.chunk_words(), qw, depth, subset, descending=False)
      if rerank:
        if self.chunks[0][0] is None or query_dense is None:
          raise ValueError("re-ranking needs the dense index and a dense query")
        return search.rerank_vectors(self.dense_rows(rows), query_dense, rows, k)
      return dist[:, :k], rows[:, :k]
    if self.chunks[0][0] is None or query_dense is None:
      raise ValueError("dense search needs the dense index and a dense query")
    if ann:
      if self.ann is None:
        raise IndexFileError(f"index {self.meta.get('path')} has no approximate-search file; "
                             "build it with `rsjax index --ann` (or search without --ann)")
      return self.ann.search(np.atleast_2d(query_dense), k, subset)
    if sharded is not None:
      return sharded.dense_topk(query_dense, k)
    unit = lambda db, q, kk: search.dense_topk(db, q, kk, unit_rows=True)  # noqa: E731
    return self._per_chunk(unit, [c[0] for c in self.chunks],
                           np.atleast_2d(query_dense), k, subset, descending=True)

  def _per_chunk(self, topk, arrays: list[np.ndarray], queries: np.ndarray, k: int,
                 subset: np.ndarray | None, descending: bool):
    """`topk(array, queries, k)` on every chunk (or its rows in `subset`), merged to the k best."""
    from rsjax import search

    found = []
    for c, arr in enumerate(arrays):
      lo, hi = self.starts[c], self.starts[c + 1]
      local = None
      if subset is not None:
        local = subset[(subset >= lo) & (subset < hi)] - lo
        if not len(local):
          continue
        arr = arr[local]  # a gather: the filtered rows only
      vals, rows = topk(arr, queries, k)
      if local is not None:
        rows = np.where(rows >= 0, local[np.maximum(rows, 0)], -1)
      found.append((vals, np.where(rows >= 0, rows + lo, -1)))
    if not found:  # no row passes the filter
      fill = -np.inf if descending else -1
      return (np.full((len(queries), k), fill, np.float32 if descending else np.int32),
              np.full((len(queries), k), -1, np.int64))
    if len(found) == 1:
      return found[0]
    vals, rows = search._merge_sorted(np.concatenate([v for v, _ in found], 1),
                                      np.concatenate([r for _, r in found], 1), k, descending)
    return vals, rows


def model_identity(config, checkpoint: str, step: int, params, tokenizer_path: str | None) -> dict:
  """What an index's vectors depend on; an append must match it exactly."""
  return {"config": json.loads(config.to_json()), "checkpoint": os.path.abspath(checkpoint),
          "step": int(step), "params_digest": params_digest(params),
          "tokenizer": os.path.abspath(tokenizer_path) if tokenizer_path else None,
          "tokenizer_digest": file_digest(tokenizer_path) if tokenizer_path else None}


def _meta_path(path: str) -> str:
  return os.path.join(path, "index.json")


def read_meta(path: str) -> dict:
  """index.json of an index folder, checked for format and version."""
  meta_file = _meta_path(path)
  if not os.path.isfile(meta_file):
    raise IndexFileError(f"{path} is not an rsjax index: {meta_file} is missing")
  try:
    with open(meta_file, encoding="utf-8") as f:
      meta = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise IndexFileError(f"{meta_file} is corrupt (not valid JSON: {e})") from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise IndexFileError(f"{meta_file} is not an rsjax index file (format {meta.get('format')!r})"
                      if isinstance(meta, dict) else f"{meta_file} is not an rsjax index file")
  if meta.get("version") not in READABLE_VERSIONS:
    raise IndexFileError(f"{meta_file} has index version {meta.get('version')}; this rsjax reads "
                      f"versions {', '.join(map(str, READABLE_VERSIONS))}. Rebuild the index with "
                      "`rsjax index`.")
  for key in ("model", "dense_dtype", "dim", "bits", "chunks"):
    if key not in meta:
      raise IndexFileError(f"{meta_file} lacks the key '{key}'")
  meta["path"] = os.path.abspath(path)
  return meta


def write_meta(path: str, meta: dict) -> None:
  """Rewrites index.json (atomically) from a loaded or updated `meta`."""
  out = {k: v for k, v in meta.items() if k != "path"}
  atomic.write_json(_meta_path(path), out, indent=1)


def check_identity(meta: dict, identity: dict, path: str) -> None:
  theirs = meta["model"]
  diff = [k for k in ("params_digest", "tokenizer_digest") if theirs.get(k) != identity.get(k)]
  if theirs.get("config", {}).get("model") != identity["config"].get("model"):
    diff.append("config.model")
  if diff:
    raise IndexFileError(
        f"index {path} was built with another model ({', '.join(diff)} differ: index from "
        f"checkpoint {theirs.get('checkpoint')} step {theirs.get('step')}, now "
        f"{identity['checkpoint']} step {identity['step']}); build a new index instead of "
        "appending")


def entry_path(entry: str | tuple[str, str]) -> str | list[str]:
  """A row's image path, absolute; a pair's [before, after] (how chunk JSON files hold them)."""
  return os.path.abspath(entry) if isinstance(entry, str) else [os.path.abspath(p) for p in entry]


def images_digest(paths: list) -> str:
  """Identifies the image (or pair) list of an `rsjax index` run, so that a rerun can resume it."""
  rows = (p if isinstance(p, str) else "\t".join(p) for p in map(entry_path, paths))
  return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:32]


def file_record(path: str, name: str) -> dict:
  full = os.path.join(path, name)
  return {"size": os.path.getsize(full), "crc32": _crc32(full)}


def write_chunk(path: str, identity: dict, paths: list[str], dense: np.ndarray,
                codes: np.ndarray | None, dense_dtype: str = "float16",
                append: bool = False, building: dict | None = None,
                footprints: np.ndarray | None = None) -> dict:
  """Creates index `path` (or, with append, adds a chunk to it). Returns the new metadata.

  dense [n, E] unit-norm float; codes [n, K/8] uint8 or None; footprints [n, 4] float (west,
  south, east, north; NaN unknown) or None. `building`: while an `rsjax index` run has more chunks
  to write, {"images_digest", "total", "done"} of that run, kept in index.json so that a rerun of
  an interrupted run resumes it; None marks the run finished."""
  if dense_dtype not in DENSE_DTYPES:
    raise ValueError(f"dense dtype must be one of {sorted(DENSE_DTYPES)}, got {dense_dtype!r}")
  if len(dense) != len(paths) or (codes is not None and len(codes) != len(paths)):
    raise ValueError(f"{len(paths)} paths but {len(dense)} dense rows and "
                     f"{None if codes is None else len(codes)} code rows")
  if footprints is not None and np.shape(footprints) != (len(paths), 4):
    raise ValueError(f"footprints must be [{len(paths)}, 4], got {np.shape(footprints)}")
  bits = int(identity["config"]["model"].get("hashing", {}).get("bits", 0)) if codes is not None else 0
  if os.path.exists(_meta_path(path)):
    if not append:
      raise IndexFileError(f"{path} already holds an index; pass --append to add to it, or choose "
                        "another --out")
    meta = read_meta(path)
    check_identity(meta, identity, path)
    if meta["dense_dtype"] != dense_dtype or meta["dim"] != dense.shape[1] or meta["bits"] != bits:
      raise IndexFileError(
          f"index {path} holds {meta['dense_dtype']} vectors of {meta['dim']} dims and "
          f"{meta['bits']}-bit codes; this append has {dense_dtype}, {dense.shape[1]} dims, "
          f"{bits} bits")
  else:
    os.makedirs(path, exist_ok=True)
    meta = {"format": FORMAT, "version": VERSION, "model": identity, "dense_dtype": dense_dtype,
            "dim": int(dense.shape[1]), "bits": bits, "chunks": []}
  number = len(meta["chunks"])
  stem = f"chunk_{number:05d}"
  arrays = {"dense": np.asarray(dense, DENSE_DTYPES[dense_dtype])}
  if codes is not None:
    arrays["codes"] = np.asarray(codes, np.uint8)
  if footprints is not None and np.isfinite(footprints).any():
    arrays["geo"] = np.asarray(footprints, np.float64)
  names = {key: f"{stem}.{key}.npy" for key in arrays}
  for key, arr in arrays.items():
    with atomic.atomic_file(os.path.join(path, names[key])) as tmp, open(tmp, "wb") as f:
      np.save(f, np.ascontiguousarray(arr))  # a file object: np.save would add .npy to a bare name
  paths_name = f"{stem}.json"
  atomic.write_json(os.path.join(path, paths_name), [entry_path(p) for p in paths],
                    indent=None)
  files = {name: file_record(path, name) for name in [*names.values(), paths_name]}
  meta["chunks"].append({"rows": len(paths), "arrays": names, "paths": paths_name,
                         "files": files})
  meta["version"] = VERSION  # a version 1 index appended to reads chunk by chunk as before
  meta.pop("path", None)
  meta.pop("ann", None)  # built over the rows before this append: stale
  if building is None:
    meta.pop("building", None)
  else:
    meta["building"] = building
  # index.json last: a crash before this line leaves the index as it was.
  atomic.write_json(_meta_path(path), meta, indent=1)
  meta["path"] = os.path.abspath(path)
  return meta


def check_file(path: str, name: str, expected: dict, verify: bool) -> str:
  full = os.path.join(path, name)
  if not os.path.isfile(full):
    raise IndexFileError(f"index {path}: file {name} listed in index.json is missing")
  size = os.path.getsize(full)
  if size != expected["size"]:
    raise IndexFileError(f"index {path}: {name} has {size} bytes, index.json says {expected['size']}"
                      " (truncated or replaced); rebuild the index")
  if verify and _crc32(full) != expected["crc32"]:
    raise IndexFileError(f"index {path}: {name} is corrupt (CRC-32 differs from index.json); "
                      "rebuild the index")
  return full


def _read_arrays(path: str, chunk: dict, verify: bool) -> dict:
  """{"dense", "codes", "geo"} of one chunk: memory maps (version 2) or in memory (version 1)."""
  arrays = chunk["arrays"]
  if isinstance(arrays, str):  # version 1: one .npz
    full = check_file(path, arrays, chunk["files"][arrays], verify)
    with np.load(full, allow_pickle=False) as z:
      return {key: z[key] for key in z.files}
  out = {}
  for key, name in arrays.items():
    full = check_file(path, name, chunk["files"][name], verify)
    # np.asarray: a plain ndarray over the map (numba kernels take it as it is), no copy.
    out[key] = np.asarray(np.load(full, mmap_mode="r", allow_pickle=False))
  return out


def load(path: str, verify: bool = True) -> Index:
  """Reads an index folder; a missing, truncated, corrupt or inconsistent file is refused.
  (rsjax.search_ann.load also opens its approximate-search graph.)"""
  meta = read_meta(path)
  chunks, geo_parts, paths = [], [], []
  want_dtype = DENSE_DTYPES.get(meta["dense_dtype"])
  for chunk in meta["chunks"]:
    names = chunk["arrays"] if isinstance(chunk["arrays"], str) else "/".join(chunk["arrays"].values())
    paths_file = check_file(path, chunk["paths"], chunk["files"][chunk["paths"]], verify)
    try:
      arrays = _read_arrays(path, chunk, verify)
      with open(paths_file, encoding="utf-8") as f:
        chunk_paths = json.load(f)
    except IndexFileError:
      raise
    except Exception as e:  # zip / npy / JSON errors all mean the same thing here
      raise IndexFileError(f"index {path}: cannot read {names} / {chunk['paths']} "
                        f"({type(e).__name__}: {e})") from None
    dense, codes, geo = arrays.get("dense"), arrays.get("codes"), arrays.get("geo")
    n = chunk["rows"]
    problems = []
    if dense is None or dense.shape != (n, meta["dim"]) or dense.dtype != want_dtype:
      problems.append(f"dense {None if dense is None else (dense.dtype, list(dense.shape))} "
                      f"(expected {meta['dense_dtype']}[{n}, {meta['dim']}])")
    if meta["bits"] and (codes is None or codes.shape != (n, -(-meta["bits"] // 8))
                         or codes.dtype != np.uint8):
      problems.append(f"codes {None if codes is None else (codes.dtype, codes.shape)} (expected "
                      f"uint8[{n}, {-(-meta['bits'] // 8)}])")
    if geo is not None and geo.shape != (n, 4):
      problems.append(f"footprints {geo.shape} (expected [{n}, 4])")
    if len(chunk_paths) != n:
      problems.append(f"{len(chunk_paths)} paths (expected {n})")
    if problems:
      raise IndexFileError(f"index {path}: chunk {names} does not match index.json: "
                        + "; ".join(problems))
    chunks.append((dense, codes if meta["bits"] else None))
    geo_parts.append(geo if geo is not None else np.full((n, 4), np.nan))
    paths += [p if isinstance(p, str) else tuple(p) for p in chunk_paths]
  if not meta["chunks"]:
    raise IndexFileError(f"index {path} has no chunks")
  has_geo = any(isinstance(c["arrays"], dict) and "geo" in c["arrays"] for c in meta["chunks"])
  footprints = np.concatenate(geo_parts) if has_geo else None
  return Index(meta=meta, paths=paths, footprints=footprints, chunks=chunks)
