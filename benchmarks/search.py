"""rsjax search against FAISS (faiss-cpu), side by side in one process, results checked equal.

Rows: 1,000,000 random binary codes of 64 and 256 bits (rsjax popcount kernel vs IndexBinaryFlat)
and 1,000,000 x 512 float32 vectors (rsjax BLAS + select vs IndexFlatIP); batches of 1 and 100
queries; top-10. FAISS runs at its best settings: all threads, and IndexFlatIP's BLAS path from
the first query (distance_compute_blas_threshold = 1; the default 20 sends small batches to a
scalar loop); for binary codes the faster of its heap and counting-sort selections.

  .venv/bin/python benchmarks/search.py                 # full size (needs about 5 GiB of RAM)
  .venv/bin/python benchmarks/search.py --rows 100000   # quick check
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import report  # noqa: E402
from rsjax import search  # noqa: E402


def best_rate(fn, n_queries: int, min_time: float, min_reps: int = 3) -> float:
  """Queries per second of the fastest of repeated calls (after one warm-up call)."""
  fn()
  best, spent, reps = np.inf, 0.0, 0
  while reps < min_reps or spent < min_time:
    start = time.perf_counter()
    fn()
    took = time.perf_counter() - start
    best, spent, reps = min(best, took), spent + took, reps + 1
  return n_queries / best


def same_results(ours, theirs, descending: bool) -> bool:
  """Equal row ids, or (for float ties / last-ulp differences) equal scores at every position."""
  (s1, i1), (s2, i2) = ours, theirs
  if np.array_equal(i1, i2):
    return True
  if descending:  # BLAS kernels may differ in the last bits; the ranked values must agree
    return bool(np.allclose(s1, s2, rtol=1e-5, atol=1e-5))
  return bool(np.array_equal(s1, s2))


def main() -> None:
  import faiss

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=1_000_000)
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--min-time", type=float, default=2.0, help="seconds of timing per row")
  args = parser.parse_args()

  threads = os.cpu_count() or 1
  faiss.omp_set_num_threads(threads)
  faiss.cvar.distance_compute_blas_threshold = 1
  rng = np.random.default_rng(0)
  rows = []

  for bits in (64, 256):
    codes = rng.integers(0, 256, size=(args.rows, bits // 8), dtype=np.uint8)
    words = search.pack_words(codes)
    index = faiss.IndexBinaryFlat(bits)
    index.add(codes)
    for batch in (1, 100):
      q = rng.integers(0, 256, size=(batch, bits // 8), dtype=np.uint8)
      qw = search.pack_words(q)
      ours = search.hamming_topk(words, qw, args.k, bits)
      faiss_rates = {}
      for heap in (True, False):
        index.use_heap = heap
        theirs = index.search(q, args.k)
        assert same_results(ours, theirs, False), f"binary {bits} bits: results differ"
        faiss_rates[heap] = best_rate(lambda: index.search(q, args.k), batch, args.min_time)
      rate = best_rate(lambda: search.hamming_topk(words, qw, args.k, bits), batch, args.min_time)
      f_rate = max(faiss_rates.values())
      rows.append({"kind": f"binary {bits}-bit", "rows": args.rows, "batch": batch, "k": args.k,
                   "rsjax_qps": rate, "faiss_qps": f_rate, "ratio": rate / f_rate,
                   "faiss_setting": "use_heap" if faiss_rates[True] >= faiss_rates[False]
                   else "counting sort", "equal": True})
    del codes, words, index

  vectors = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
  vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
  index = faiss.IndexFlatIP(args.dim)
  index.add(vectors)
  for batch in (1, 100):
    q = rng.standard_normal((batch, args.dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ours = search.dense_topk(vectors, q, args.k)
    theirs = index.search(q, args.k)
    equal = same_results(ours, theirs, True)
    assert equal, "dense: results differ"
    rate = best_rate(lambda: search.dense_topk(vectors, q, args.k), batch, args.min_time)
    f_rate = best_rate(lambda: index.search(q, args.k), batch, args.min_time)
    rows.append({"kind": f"dense fp32 {args.dim}-d", "rows": args.rows, "batch": batch,
                 "k": args.k, "rsjax_qps": rate, "faiss_qps": f_rate, "ratio": rate / f_rate,
                 "faiss_setting": "BLAS threshold 1", "equal": equal})

  report(rows, __file__, meta={"threads": threads, "faiss": faiss.__version__,
                               "numpy": np.__version__})


if __name__ == "__main__":
  main()
