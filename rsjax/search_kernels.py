"""Exact top-k kernels for the host CPU, compiled with numba (one pass, no full sort).

Order everywhere in rsjax search: best score first, ties broken by the lower database index
(the order of a stable sort). Binary codes are compared by Hamming distance (smaller is better),
dense vectors by inner product (larger is better).

Binary: a Hamming distance is a small integer in [0, bits], so each query keeps, per distance, the
first k rows met (in index order) and a running threshold: the smallest distance d such that at
least k rows at distance <= d were seen. Rows above the threshold cost one compare. This is a
counting selection, linear in N, where a generic top-k (XLA's lax.top_k, argpartition) is the
bottleneck: about 3.5 ms per million rows on these CPUs, more than the popcount pass itself.

Dense: scores come from BLAS in row blocks; each query keeps its k best in a small sorted buffer,
updated only when a score beats the current k-th (strictly, so earlier rows win ties). The select
runs on one thread: it is a fraction of the BLAS time, and a second thread pool spinning beside
BLAS's own made the whole search ten times slower on 2 cores.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

BLOCK_ROWS = 1024  # rows of the database a query group scans before moving on (stays in L1/L2)


@intrinsic
def _popcount64(typingctx, x):
  """LLVM ctpop on a uint64: one POPCNT instruction on x86-64."""
  sig = types.uint64(types.uint64)

  def codegen(context, builder, signature, args):
    return builder.ctpop(args[0])

  return sig, codegen


@njit(cache=True, inline="always")
def _hamming(db, row, q):
  d = 0
  for w in range(db.shape[1]):
    d += _popcount64(db[row, w] ^ q[w])
  return d


@njit(cache=True, inline="always")
def _block_distances(db, q, lo, hi, buf):
  """Distances of rows [lo, hi) into buf[:hi-lo] (int32); returns the smallest, found in the same
  pass. The common word counts get loops with a fixed body, which LLVM vectorises across rows;
  others take the generic loop."""
  words = db.shape[1]
  nearest = np.int32(1 << 30)
  if words == 1:
    q0 = q[0]
    for i in range(lo, hi):
      d = np.int32(_popcount64(db[i, 0] ^ q0))
      buf[i - lo] = d
      nearest = min(nearest, d)
  elif words == 2:
    q0, q1 = q[0], q[1]
    for i in range(lo, hi):
      d = np.int32(_popcount64(db[i, 0] ^ q0) + _popcount64(db[i, 1] ^ q1))
      buf[i - lo] = d
      nearest = min(nearest, d)
  elif words == 4:
    q0, q1, q2, q3 = q[0], q[1], q[2], q[3]
    for i in range(lo, hi):
      d = np.int32(_popcount64(db[i, 0] ^ q0) + _popcount64(db[i, 1] ^ q1)
                   + _popcount64(db[i, 2] ^ q2) + _popcount64(db[i, 3] ^ q3))
      buf[i - lo] = d
      nearest = min(nearest, d)
  else:
    for i in range(lo, hi):
      d = np.int32(_hamming(db, i, q))
      buf[i - lo] = d
      nearest = min(nearest, d)
  return nearest


SCAN_ROWS = 256  # rows whose distances are computed together before the (rare) selection step


@njit(cache=True, inline="always")
def _select_block(buf, rows, lo, k, buckets, fill, count, state):
  """Adds the distances buf[:rows] of database rows lo.. to one query's selection state.

  buckets [bits+1, k] int64: first k rows met at each distance; fill/count [bits+1]: rows kept /
  seen at each distance; state [2]: (threshold t, rows seen at distance <= t)."""
  t = state[0]
  total = state[1]
  for j in range(rows):
    d = buf[j]
    if d <= t:
      if fill[d] < k:
        buckets[d, fill[d]] = lo + j
        fill[d] += 1
      count[d] += 1
      total += 1
      while t > 0 and total - count[t] >= k:  # the k best no longer need distance t
        total -= count[t]
        t -= 1
  state[0] = t
  state[1] = total


@njit(cache=True)
def _scan_binary(db, q, lo, hi, k, buckets, fill, count, state):
  """Adds rows [lo, hi) of `db` to one query's selection state (see _select_block). Distances
  come a block at a time; a block whose nearest row is beyond the threshold is skipped whole."""
  buf = np.empty(SCAN_ROWS, np.int32)
  for start in range(lo, hi, SCAN_ROWS):
    stop = min(hi, start + SCAN_ROWS)
    nearest = _block_distances(db, q, start, stop, buf)
    if nearest <= state[0]:
      _select_block(buf, stop - start, start, k, buckets, fill, count, state)


@njit(cache=True)
def _emit_binary(k, buckets, fill, state, out_d, out_i):
  """Writes the selection in (distance, index) order; unused slots keep -1."""
  n = 0
  for d in range(state[0] + 1):
    for j in range(fill[d]):
      if n == k:
        return
      out_d[n] = d
      out_i[n] = buckets[d, j]
      n += 1


@njit(cache=True, parallel=True)
def hamming_topk_chunks(db, queries, k, bits, n_chunks, out_d, out_i):
  """Top-k of every (query, database chunk) pair.

  db [N, W] uint64, queries [Q, W] uint64 -> out_d [Q, n_chunks, k] int32 and out_i [...] int64
  (filled with -1 where a chunk has fewer than k rows). Chunks split the rows when there are
  fewer queries than threads; each task walks its chunk in blocks, keeping one state per query.
  """
  n, n_q = db.shape[0], queries.shape[0]
  chunk = (n + n_chunks - 1) // n_chunks
  for task in prange(n_q * n_chunks):
    qi = task // n_chunks
    c = task % n_chunks
    lo = min(n, c * chunk)
    hi = min(n, lo + chunk)
    buckets = np.empty((bits + 1, k), np.int64)
    fill = np.zeros(bits + 1, np.int64)
    count = np.zeros(bits + 1, np.int64)
    state = np.array([bits, 0], np.int64)
    _scan_binary(db, queries[qi], lo, hi, k, buckets, fill, count, state)
    _emit_binary(k, buckets, fill, state, out_d[qi, c], out_i[qi, c])


@njit(cache=True, inline="always")
def _transpose_block(db, lo, hi, out):
  """Rows [lo, hi) of db [N, W] into out [W, >= hi-lo] (word-major)."""
  for i in range(hi - lo):
    for w in range(db.shape[1]):
      out[w, i] = db[lo + i, w]


@njit(cache=True, inline="always")
def _word_major_distances(block, rows, q, buf):
  """Distances of the first `rows` columns of a word-major block [W, B] to q into buf (int32);
  returns the smallest. Each word is a contiguous run, so LLVM vectorises the popcounts across
  rows (VPOPCNTQ where the CPU has it)."""
  words = block.shape[0]
  nearest = np.int32(1 << 30)
  if words == 1:
    a0 = block[0]
    q0 = q[0]
    for i in range(rows):
      d = np.int32(_popcount64(a0[i] ^ q0))
      buf[i] = d
      nearest = min(nearest, d)
    return nearest
  if words == 4:
    a0, a1, a2, a3 = block[0], block[1], block[2], block[3]
    q0, q1, q2, q3 = q[0], q[1], q[2], q[3]
    for i in range(rows):
      d = np.int32(_popcount64(a0[i] ^ q0) + _popcount64(a1[i] ^ q1)
                   + _popcount64(a2[i] ^ q2) + _popcount64(a3[i] ^ q3))
      buf[i] = d
      nearest = min(nearest, d)
    return nearest
  for i in range(rows):
    buf[i] = 0
  for w in range(words):
    a = block[w]
    qw = q[w]
    for i in range(rows):
      buf[i] += np.int32(_popcount64(a[i] ^ qw))
  for i in range(rows):
    nearest = min(nearest, buf[i])
  return nearest


@njit(cache=True, parallel=True)
def hamming_topk_grouped(db, queries, k, bits, n_groups, out_d, out_i):
  """Top-k for many queries: threads take groups of queries and walk the database block by block.
  Each block is turned word-major once, then every query of the group scans it from cache
  (the transpose is paid once per block, the vectorised distances once per query).

  db [N, W] uint64, queries [Q, W] -> out_d [Q, k] int32, out_i [Q, k] int64.
  """
  n, n_q, words = db.shape[0], queries.shape[0], db.shape[1]
  per = (n_q + n_groups - 1) // n_groups
  for g in prange(n_groups):
    q0 = min(n_q, g * per)
    q1 = min(n_q, q0 + per)
    m = q1 - q0
    buckets = np.empty((m, bits + 1, k), np.int64)
    fill = np.zeros((m, bits + 1), np.int64)
    count = np.zeros((m, bits + 1), np.int64)
    state = np.empty((m, 2), np.int64)
    for j in range(m):
      state[j, 0] = bits
      state[j, 1] = 0
    block = np.empty((words, BLOCK_ROWS), np.uint64)
    buf = np.empty(BLOCK_ROWS, np.int32)
    for lo in range(0, n, BLOCK_ROWS):
      hi = min(n, lo + BLOCK_ROWS)
      _transpose_block(db, lo, hi, block)
      for j in range(m):
        nearest = _word_major_distances(block, hi - lo, queries[q0 + j], buf)
        if nearest <= state[j, 0]:  # a block wholly beyond the threshold costs nothing more
          _select_block(buf, hi - lo, lo, k, buckets[j], fill[j], count[j], state[j])
    for j in range(m):
      _emit_binary(k, buckets[j], fill[j], state[j], out_d[q0 + j], out_i[q0 + j])


@njit(cache=True, parallel=True)
def hamming_distances(db, queries, out):
  """All distances: db [N, W] uint64, queries [Q, W] -> out [Q, N] int32."""
  for qi in prange(queries.shape[0]):
    for i in range(db.shape[0]):
      out[qi, i] = _hamming(db, i, queries[qi])


@njit(cache=True)
def dense_select_block(scores, offset, best_s, best_i):
  """Merges a block of scores [Q, B] (rows offset..offset+B) into each query's sorted k best.

  best_s [Q, k] float32 descending (start at -inf), best_i [Q, k] int64 (start at -1). A score
  enters only when strictly better than the current k-th: among equal scores the earlier row stays.
  """
  k = best_s.shape[1]
  for qi in range(scores.shape[0]):
    s_row = best_s[qi]
    i_row = best_i[qi]
    worst = s_row[k - 1]
    for j in range(scores.shape[1]):
      s = scores[qi, j]
      if s > worst or (i_row[k - 1] < 0 and s == s):  # fill the buffer first (NaN never enters)
        pos = k - 1
        while pos > 0 and (s > s_row[pos - 1] or i_row[pos - 1] < 0):
          s_row[pos] = s_row[pos - 1]
          i_row[pos] = i_row[pos - 1]
          pos -= 1
        s_row[pos] = s
        i_row[pos] = offset + j
        worst = s_row[k - 1]


def num_threads() -> int:
  return numba.get_num_threads()
