"""Exact top-k search over dense embeddings and bit-packed binary codes.

Order: best first (largest inner product / smallest Hamming distance), ties by the lower row
index, as a stable sort would give. Results are exact, never approximate.

- Host search (`hamming_topk`, `dense_topk`): numba kernels over all CPU threads, see
  rsjax/search_kernels.py. Binary codes are compared as 64-bit words with one POPCNT each.
- Device search (`ShardedSearch`): the database rows are split across all devices of a 1-D mesh,
  so an index larger than one device's memory fits; each device returns its own top-k and the
  k * devices candidates are merged, which is exact because every global top-k row is in its
  shard's top-k.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rsjax import search_kernels as kernels
from rsjax.errors import InputError

DENSE_BLOCK_SCORES = 1 << 24  # scores per BLAS call ([Q, rows] float32, 64 MiB)
# Query batches at least this many per thread share each database block (turned word-major once
# for all of them); smaller batches scan the rows in place, split across threads.
GROUPED_QUERIES_PER_THREAD = 4
MIN_BLOCK_ROWS = 16384  # index rows per BLAS call at the least (query batches are split to fit)
# float16 rows and at most this many queries: usearch's exact float16 scan (see
# _dense_topk_usearch), which measured faster here than widening rows for BLAS.
USEARCH_MAX_QUERIES = 8
USEARCH_MIN_ROWS = 4096


def pack_words(packed: np.ndarray) -> np.ndarray:
  """uint8 codes [N, K/8] (np.packbits order) -> uint64 words [N, ceil(K/64)], zero padded.

  Padding bits are 0 in every code, so they never add to a Hamming distance."""
  packed = np.ascontiguousarray(packed, dtype=np.uint8)
  if packed.ndim != 2:
    raise ValueError(f"packed codes must be [N, bytes], got shape {packed.shape}")
  n, nbytes = packed.shape
  words = -(-nbytes // 8)
  if nbytes != words * 8:
    packed = np.concatenate([packed, np.zeros((n, words * 8 - nbytes), np.uint8)], 1)
  return packed.view(np.uint64).reshape(n, words)


def _check_k(k: int) -> int:
  if int(k) < 1:
    raise InputError(f"k (the number of results, --k) must be >= 1, got {k}")
  return int(k)


def _merge_sorted(dist: np.ndarray, idx: np.ndarray, k: int, descending: bool):
  """Candidates [Q, C] (-1 index = empty) -> the k best per query by (score, index)."""
  key = np.where(idx < 0, np.inf, -dist if descending else dist).astype(np.float64)
  big = np.where(idx < 0, np.iinfo(np.int64).max, idx)
  order = np.lexsort((big, key), axis=1)[:, :k]
  dist, idx = np.take_along_axis(dist, order, 1), np.take_along_axis(idx, order, 1)
  if dist.shape[1] < k:  # fewer candidates than k: pad with empty slots
    pad = ((0, 0), (0, k - dist.shape[1]))
    dist = np.pad(dist, pad, constant_values=-np.inf if descending else -1)
    idx = np.pad(idx, pad, constant_values=-1)
  return dist, idx


def hamming_topk(db_words: np.ndarray, query_words: np.ndarray, k: int,
                 bits: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Exact Hamming top-k. db_words [N, W] uint64, query_words [Q, W] uint64.

  Returns (distances [Q, k] int32, row indices [Q, k] int64); slots past N hold -1."""
  k = _check_k(k)
  db = np.ascontiguousarray(db_words, np.uint64)
  q = np.ascontiguousarray(np.atleast_2d(query_words), np.uint64)
  if db.ndim != 2 or q.shape[1] != db.shape[1]:
    raise InputError(f"query codes have {q.shape[1]} 64-bit words, the index {db.shape[1:]} per "
                     "row: the queries come from another model than the index; encode them with "
                     "the index's model")
  bits = int(bits or 64 * db.shape[1])
  threads = kernels.num_threads()
  n_q = len(q)
  if n_q >= GROUPED_QUERIES_PER_THREAD * threads:
    out_d = np.full((n_q, k), -1, np.int32)
    out_i = np.full((n_q, k), -1, np.int64)
    kernels.hamming_topk_grouped(db, q, k, bits, min(n_q, threads), out_d, out_i)
    return out_d, out_i
  # Few queries: each (query, row chunk) is a task; the rows are split so that every thread works, then merge the per-chunk top-k.
  n_chunks = max(1, min(threads * 2 // max(n_q, 1), len(db) // 4096 or 1))
  out_d = np.full((n_q, n_chunks, k), -1, np.int32)
  out_i = np.full((n_q, n_chunks, k), -1, np.int64)
  kernels.hamming_topk_chunks(db, q, k, bits, n_chunks, out_d, out_i)
  if n_chunks == 1:
    return out_d[:, 0], out_i[:, 0]
  return _merge_sorted(out_d.reshape(n_q, -1), out_i.reshape(n_q, -1), k, descending=False)


def hamming_distances(db_words: np.ndarray, query_words: np.ndarray) -> np.ndarray:
  """All Hamming distances [Q, N] int32 (for evaluation sets, not archives)."""
  db = np.ascontiguousarray(db_words, np.uint64)
  q = np.ascontiguousarray(np.atleast_2d(query_words), np.uint64)
  out = np.empty((len(q), len(db)), np.int32)
  kernels.hamming_distances(db, q, out)
  return out


def dense_topk(db: np.ndarray, queries: np.ndarray, k: int, block_rows: int | None = None,
               unit_rows: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Exact inner-product top-k. db [N, D] float32 or float16, queries [Q, D].

  unit_rows: the rows have unit norm (an index's do), which lets a few queries over float16 rows
  go through usearch's exact scan with a proof of exactness (_dense_topk_usearch).

  Returns (scores [Q, k] float32, row indices [Q, k] int64); slots past N hold -1 / -inf."""
  k = _check_k(k)
  q = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
  if db.ndim != 2 or q.shape[1] != db.shape[1]:
    raise InputError(f"query vectors have dimension {q.shape[1]}, the index {db.shape[1:]}: the "
                     "queries come from another model than the index; encode them with the "
                     "index's model")
  if (unit_rows and db.dtype == np.float16 and len(q) <= USEARCH_MAX_QUERIES
      and len(db) >= USEARCH_MIN_ROWS):
    found = _dense_topk_usearch(db, q, k)
    if found is not None:
      return found
  max_queries = DENSE_BLOCK_SCORES // MIN_BLOCK_ROWS
  if len(q) > max_queries:  # a query batch of any size: score matrices stay DENSE_BLOCK_SCORES
    parts = [dense_topk(db, q[i: i + max_queries], k, block_rows, unit_rows)
             for i in range(0, len(q), max_queries)]
    return np.concatenate([s for s, _ in parts]), np.concatenate([r for _, r in parts])
  # Large blocks keep BLAS efficient; small queries batches scan the whole index in one call.
  block_rows = block_rows or max(MIN_BLOCK_ROWS, DENSE_BLOCK_SCORES // len(q))
  best_s = np.full((len(q), k), -np.inf, np.float32)
  best_i = np.full((len(q), k), -1, np.int64)
  for lo in range(0, len(db), block_rows):
    block = db[lo: lo + block_rows]
    if block.dtype != np.float32:  # float16 storage: widen one block at a time
      block = block.astype(np.float32)
    scores = q @ block.T
    kernels.dense_select_block(scores, lo, best_s, best_i)
  return best_s, best_i


def _dense_topk_usearch(db: np.ndarray, q: np.ndarray, k: int):
  """Exact top-k of a few queries over float16 rows through usearch's exact scan, or None where
  its result cannot be proven exact (then the caller scans itself).

  usearch's SIMD float16 dot products (accumulated in float32) beat widening the rows to float32
  for BLAS when the batch is small (benchmarks/search.py). It needs the query in float16 too,
  which moves each score by at most 2^-11 |q| |x| (rounding of each query coordinate, Cauchy-
  Schwarz). So: take C > k candidates by the float16 query, re-score them with the float32 query
  exactly as the BLAS path does, and accept when even the best row left out (float16 score at most
  the C-th) could not reach the k-th exact score within that bound."""
  try:
    from usearch.index import MetricKind
    from usearch.index import search as usearch_search
  except ImportError:
    return None
  depth = min(len(db), max(4 * k, k + 32))
  found = usearch_search(db, q.astype(np.float16), depth, MetricKind.IP, exact=True,
                         threads=kernels.num_threads())
  keys = np.atleast_2d(found.keys).astype(np.int64)
  first_pass = 1.0 - np.atleast_2d(found.distances).astype(np.float64)
  keys = np.where(keys < len(db), keys, -1)
  vectors = np.asarray(db[np.maximum(keys, 0).reshape(-1)], np.float32).reshape(*keys.shape, -1)
  exact = np.einsum("qcd,qd->qc", vectors, q).astype(np.float32)
  exact = np.where(keys < 0, -np.inf, exact)
  scores, rows = _merge_sorted(exact, keys, k, descending=True)
  if depth < len(db):
    # Rows of unit norm (1 + 2^-11 at most after float16 rounding); twice the bound, for margin.
    slack = 2.0 ** -10 * np.linalg.norm(q, axis=1) * 1.01 + db.shape[1] * 2.0 ** -22
    left_out_best = first_pass[:, -1] + slack  # no row outside the candidates scores above this
    if not np.all(left_out_best < scores[:, -1]):
      return None
  return scores.astype(np.float32), rows


def rerank(db: np.ndarray, queries: np.ndarray, candidates: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray]:
  """Re-orders candidate rows [Q, C] (-1 = none) by dense inner product; returns the k best.

  db [N, D], queries [Q, D] float. Returns (scores [Q, k] float32, rows [Q, k] int64)."""
  cand = np.atleast_2d(candidates)
  safe = np.where(cand < 0, 0, cand)
  vectors = np.asarray(db[safe.reshape(-1)], np.float32).reshape(*cand.shape, -1)
  return rerank_vectors(vectors, queries, cand, k)


def rerank_vectors(vectors: np.ndarray, queries: np.ndarray, candidates: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
  """rerank with the candidates' vectors already gathered: vectors [Q, C, D], queries [Q, D],
  candidates [Q, C] (-1 = none). Returns (scores [Q, k] float32, rows [Q, k] int64)."""
  k = _check_k(k)
  q = np.atleast_2d(np.asarray(queries, np.float32))
  cand = np.atleast_2d(candidates)
  vectors = np.asarray(vectors, np.float32)
  scores = np.einsum("qcd,qd->qc", vectors, q).astype(np.float32)
  scores = np.where(cand < 0, -np.inf, scores).astype(np.float32)
  return _merge_sorted(scores, cand.astype(np.int64), k, descending=True)


# ---------------------------------------------------------------------------------------------
# Device search: rows sharded over a 1-D mesh of all devices.


def rows_mesh(devices=None) -> Mesh:
  devices = np.asarray(devices if devices is not None else jax.devices())
  return Mesh(devices.reshape(-1), ("rows",))


def _words32(words64: np.ndarray) -> np.ndarray:
  """uint64 words -> uint32 pairs (JAX runs without 64-bit types by default)."""
  return np.ascontiguousarray(words64).view(np.uint32)


class ShardedSearch:
  """Exact top-k over a database whose rows are split across the devices of `mesh`.

  Holds dense vectors [N, D] and/or binary words [N, W64]; each device stores N / devices rows.
  """

  def __init__(self, mesh: Mesh, dense: np.ndarray | None = None,
               words: np.ndarray | None = None, bits: int | None = None):
    self.mesh = mesh
    self.n_dev = mesh.devices.size
    sizes = {len(a) for a in (dense, words) if a is not None}
    if len(sizes) != 1:
      raise ValueError("ShardedSearch needs dense and/or binary rows of one common length")
    self.n = sizes.pop()
    self.per = -(-max(self.n, 1) // self.n_dev)
    pad = self.per * self.n_dev - self.n
    shard = NamedSharding(mesh, P("rows"))
    self.dense = self.words = None
    if dense is not None:
      self.dense = jax.device_put(np.pad(np.asarray(dense), ((0, pad), (0, 0))), shard)
    if words is not None:
      self.words = jax.device_put(np.pad(_words32(words), ((0, pad), (0, 0))), shard)
      self.bits = int(bits or 64 * words.shape[1])

  @functools.partial(jax.jit, static_argnums=(0, 3))
  def _local_hamming(self, db, q, k):
    def local(db_shard, q):
      d = jax.lax.population_count(db_shard[None, :, :] ^ q[:, None, :]).astype(jnp.int32).sum(-1)
      row = jnp.arange(db_shard.shape[0]) + jax.lax.axis_index("rows") * db_shard.shape[0]
      d = jnp.where(row[None, :] < self.n, d, self.bits + 1)  # padding rows lose
      neg, pos = jax.lax.top_k(-d, k)  # equal keys: lower position first
      return (-neg)[None], jnp.take(row, pos)[None]
    return jax.shard_map(local, mesh=self.mesh, in_specs=(P("rows"), P()),
                         out_specs=(P("rows"), P("rows")))(db, q)

  @functools.partial(jax.jit, static_argnums=(0, 3))
  def _local_dense(self, db, q, k):
    def local(db_shard, q):
      s = jnp.einsum("qd,nd->qn", q, db_shard.astype(jnp.float32))
      row = jnp.arange(db_shard.shape[0]) + jax.lax.axis_index("rows") * db_shard.shape[0]
      s = jnp.where(row[None, :] < self.n, s, -jnp.inf)
      top, pos = jax.lax.top_k(s, k)
      return top[None], jnp.take(row, pos)[None]
    return jax.shard_map(local, mesh=self.mesh, in_specs=(P("rows"), P()),
                         out_specs=(P("rows"), P("rows")))(db, q)

  def _gather(self, vals, rows, k, descending):
    vals = np.asarray(jax.device_get(vals))  # [devices, Q, k_local]
    rows = np.asarray(jax.device_get(rows)).astype(np.int64)
    rows = np.where(rows < self.n, rows, -1)
    q = vals.shape[1]
    vals = vals.transpose(1, 0, 2).reshape(q, -1)
    rows = rows.transpose(1, 0, 2).reshape(q, -1)
    v, r = _merge_sorted(vals, rows, k, descending)
    if descending:
      v = np.where(r < 0, -np.inf, v).astype(np.float32)
    else:
      v = np.where(r < 0, -1, v).astype(np.int32)
    return v, r

  def hamming_topk(self, query_words: np.ndarray, k: int):
    """query_words [Q, W64] uint64 -> (distances [Q, k] int32, rows [Q, k] int64)."""
    if self.words is None:
      raise InputError("this index has no binary codes (its model has no hashing head); search "
                       "its dense vectors instead")
    k_local = min(_check_k(k), self.per)
    q = jnp.asarray(_words32(np.atleast_2d(query_words)))
    return self._gather(*self._local_hamming(self.words, q, k_local), k, descending=False)

  def dense_topk(self, queries: np.ndarray, k: int):
    """queries [Q, D] -> (scores [Q, k] float32, rows [Q, k] int64)."""
    if self.dense is None:
      raise InputError("this index has no dense vectors; search its binary codes instead")
    k_local = min(_check_k(k), self.per)
    q = jnp.asarray(np.atleast_2d(queries), jnp.float32)
    return self._gather(*self._local_dense(self.dense, q, k_local), k, descending=True)
