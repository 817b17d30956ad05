"""Archive indexes: dense embeddings and bit-packed hash codes of every image, with metadata.

On disk an index is a folder:

  index.json           format, version, model identity (config, checkpoint, step, parameter
                       digest, tokenizer), dense dtype and dimension, code bits, and the chunks
  chunk_00000.npz      one per build or append: dense [n, E] float16|float32 (unit norm), codes
                       [n, K/8] uint8 (np.packbits order; absent without a hashing head)
  chunk_00000.json     the n image paths of the chunk

Appending adds a chunk, so an append costs only what it adds. index.json records every file's
size and CRC-32; loading checks them, the shapes and the dtypes, and refuses a file that differs
with a message naming it. Appending with another model than the index was built with is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zlib

import numpy as np

from rsjax import atomic
from rsjax.errors import InputError

FORMAT = "rsjax-index"
VERSION = 1
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

  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    arr = np.asarray(jax.device_get(leaf))
    h.update(jax.tree_util.keystr(path).encode())
    h.update(str((arr.shape, arr.dtype.str)).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()[:32]


def file_digest(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:32]


@dataclasses.dataclass
class Index:
  """A loaded index. dense [N, E] (float16/float32) and codes [N, K/8] uint8 (or None)."""
  meta: dict
  paths: list[str]
  dense: np.ndarray | None
  codes: np.ndarray | None
  _words: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.paths)

  @property
  def bits(self) -> int:
    return int(self.meta["bits"])

  @property
  def words(self) -> np.ndarray:
    """The codes as uint64 words [N, ceil(K/64)] for popcount search (made once)."""
    if self.codes is None:
      raise IndexFileError(f"index {self.meta.get('path')} has no binary codes (model without a "
                        "hashing head); search it densely")
    if self._words is None:
      from rsjax import search
      self._words = search.pack_words(self.codes)
    return self._words

  def search(self, query_dense: np.ndarray | None = None, query_codes: np.ndarray | None = None,
             k: int = 20, binary: bool = False, rerank: int = 0, sharded=None):
    """Top-k rows for a batch of queries: dense [Q, E] and/or packed codes [Q, K/8].

    binary: Hamming ranking by popcount; with rerank = R >= k, the R nearest codes are re-ordered
    by dense score. `sharded`: an rsjax.search.ShardedSearch over this index's rows (device
    search) instead of the host kernels. Returns (scores [Q, k], rows [Q, k]); Hamming distances
    are the scores of a binary search without rerank."""
    from rsjax import search

    if binary:
      if query_codes is None:
        raise ValueError("binary search needs query codes")
      qw = search.pack_words(np.atleast_2d(query_codes))
      depth = max(k, rerank)
      if sharded is not None:
        dist, rows = sharded.hamming_topk(qw, depth)
      else:
        dist, rows = search.hamming_topk(self.words, qw, depth, self.bits)
      if rerank:
        if self.dense is None or query_dense is None:
          raise ValueError("re-ranking needs the dense index and a dense query")
        return search.rerank(self.dense, query_dense, rows, k)
      return dist[:, :k], rows[:, :k]
    if self.dense is None or query_dense is None:
      raise ValueError("dense search needs the dense index and a dense query")
    if sharded is not None:
      return sharded.dense_topk(query_dense, k)
    return search.dense_topk(self.dense, query_dense, k)


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
  if meta.get("version") != VERSION:
    raise IndexFileError(f"{meta_file} has index version {meta.get('version')}; this rsjax reads "
                      f"version {VERSION}. Rebuild the index with `rsjax index`.")
  for key in ("model", "dense_dtype", "dim", "bits", "chunks"):
    if key not in meta:
      raise IndexFileError(f"{meta_file} lacks the key '{key}'")
  meta["path"] = os.path.abspath(path)
  return meta


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


def images_digest(paths: list[str]) -> str:
  """Identifies the image list of an `rsjax index` run, so that a rerun can resume it."""
  return hashlib.sha256("\n".join(os.path.abspath(p) for p in paths).encode()).hexdigest()[:32]


def write_chunk(path: str, identity: dict, paths: list[str], dense: np.ndarray,
                codes: np.ndarray | None, dense_dtype: str = "float16",
                append: bool = False, building: dict | None = None) -> dict:
  """Creates index `path` (or, with append, adds a chunk to it). Returns the new metadata.

  dense [n, E] unit-norm float; codes [n, K/8] uint8 or None. `building`: while an `rsjax index`
  run has more chunks to write, {"images_digest", "total", "done"} of that run, kept in index.json
  so that a rerun of an interrupted run resumes it; None marks the run finished."""
  if dense_dtype not in DENSE_DTYPES:
    raise ValueError(f"dense dtype must be one of {sorted(DENSE_DTYPES)}, got {dense_dtype!r}")
  if len(dense) != len(paths) or (codes is not None and len(codes) != len(paths)):
    raise ValueError(f"{len(paths)} paths but {len(dense)} dense rows and "
                     f"{None if codes is None else len(codes)} code rows")
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
  arrays_name, paths_name = f"chunk_{number:05d}.npz", f"chunk_{number:05d}.json"
  arrays = {"dense": np.asarray(dense, DENSE_DTYPES[dense_dtype])}
  if codes is not None:
    arrays["codes"] = np.asarray(codes, np.uint8)

  with atomic.atomic_file(os.path.join(path, arrays_name)) as tmp, open(tmp, "wb") as f:
    np.savez(f, **arrays)  # a file object: np.savez would add .npz to a bare name
  atomic.write_json(os.path.join(path, paths_name), [os.path.abspath(p) for p in paths],
                    indent=None)
  files = {}
  for name in (arrays_name, paths_name):
    full = os.path.join(path, name)
    files[name] = {"size": os.path.getsize(full), "crc32": _crc32(full)}
  meta["chunks"].append({"rows": len(paths), "arrays": arrays_name, "paths": paths_name,
                         "files": files})
  meta.pop("path", None)
  if building is None:
    meta.pop("building", None)
  else:
    meta["building"] = building
  # index.json last: a crash before this line leaves the index as it was.
  atomic.write_json(_meta_path(path), meta, indent=1)
  meta["path"] = os.path.abspath(path)
  return meta


def _check_file(path: str, name: str, expected: dict, verify: bool) -> str:
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


def load(path: str, verify: bool = True) -> Index:
  """Reads an index folder; a missing, truncated, corrupt or inconsistent file is refused."""
  meta = read_meta(path)
  dense_parts, code_parts, paths = [], [], []
  want_dtype = DENSE_DTYPES.get(meta["dense_dtype"])
  for chunk in meta["chunks"]:
    arrays_file = _check_file(path, chunk["arrays"], chunk["files"][chunk["arrays"]], verify)
    paths_file = _check_file(path, chunk["paths"], chunk["files"][chunk["paths"]], verify)
    try:
      with np.load(arrays_file, allow_pickle=False) as z:
        dense = z["dense"]
        codes = z["codes"] if "codes" in z else None
      with open(paths_file, encoding="utf-8") as f:
        chunk_paths = json.load(f)
    except Exception as e:  # zip / npy / JSON errors all mean the same thing here
      raise IndexFileError(f"index {path}: cannot read {chunk['arrays']} / {chunk['paths']} "
                        f"({type(e).__name__}: {e})") from None
    n = chunk["rows"]
    problems = []
    if dense.shape != (n, meta["dim"]) or dense.dtype != want_dtype:
      problems.append(f"dense {dense.dtype}{list(dense.shape)} (expected {meta['dense_dtype']}"
                      f"[{n}, {meta['dim']}])")
    if meta["bits"] and (codes is None or codes.shape != (n, -(-meta["bits"] // 8))
                         or codes.dtype != np.uint8):
      problems.append(f"codes {None if codes is None else (codes.dtype, codes.shape)} (expected "
                      f"uint8[{n}, {-(-meta['bits'] // 8)}])")
    if len(chunk_paths) != n:
      problems.append(f"{len(chunk_paths)} paths (expected {n})")
    if problems:
      raise IndexFileError(f"index {path}: chunk {chunk['arrays']} does not match index.json: "
                        + "; ".join(problems))
    dense_parts.append(dense)
    code_parts.append(codes)
    paths += chunk_paths
  if not meta["chunks"]:
    raise IndexFileError(f"index {path} has no chunks")
  dense = np.concatenate(dense_parts) if len(dense_parts) > 1 else dense_parts[0]
  codes = None
  if meta["bits"]:
    codes = np.concatenate(code_parts) if len(code_parts) > 1 else code_parts[0]
  return Index(meta=meta, paths=paths, dense=dense, codes=codes)
