"""rsjax search against FAISS (faiss-cpu) and usearch, side by side in one process, results checked.

Sections (--sections, default all):
- binary: 1,000,000 random codes of 64 and 256 bits (rsjax popcount kernel vs FAISS
  IndexBinaryFlat), batches of 1 and 100 queries, top-10;
- dense: 1,000,000 x 512 unit vectors, float32 (rsjax BLAS + select vs FAISS IndexFlatIP vs
  usearch's exact scan) and float16, the index's default storage (rsjax vs FAISS
  IndexScalarQuantizer QT_fp16 vs usearch's exact float16 scan);
- big: 10,000,000 codes of 64 and 256 bits, rsjax searching the memory-mapped .npy file as
  `rsjax.index` does (FAISS holds its copy in memory);
- ann: 1,000,000 clustered unit vectors (128-d, the demo model's width): usearch HNSW and FAISS IndexHNSWFlat (the same graph
  settings) against exact dense search: recall@10, queries/s, build time.

FAISS runs at its best settings: all threads, IndexFlatIP's BLAS path from the first query
(distance_compute_blas_threshold = 1; the default 20 sends small batches to a scalar loop), and for
binary codes the faster of its heap and counting-sort selections. Each row times the contenders in
turns of eight calls each and keeps each one's fastest call (see best_rates).

  .venv/bin/python benchmarks/search.py                          # everything (about 12 GiB of RAM)
  .venv/bin/python benchmarks/search.py --rows 100000 --big-rows 1000000 --ann-rows 100000  # quick
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import report  # noqa: E402
from rsjax import search, search_ann  # noqa: E402


def best_rates(fns: dict, n_queries: int, min_time: float, min_reps: int = 3,
               burst: int = 8) -> dict:
  """Queries per second of the fastest call of each function, after one warm-up call each.

  The functions take turns, `burst` calls each (a a a ..., b b b ..., a a a ...), so that a busy
  spell of the machine hits all of them alike, and each is also timed in its steady state: the
  first calls after a switch run several times slower for both libraries (measured here: 3.4 ms
  against 1.8 ms for a 256-bit query), as the other's index has taken the shared cache. The
  fastest call of each is kept."""
  for fn in fns.values():
    fn()
  best = {name: np.inf for name in fns}
  spent, reps = 0.0, 0
  while reps < min_reps or spent < min_time:
    for name, fn in fns.items():
      for _ in range(burst):
        start = time.perf_counter()
        fn()
        took = time.perf_counter() - start
        best[name] = min(best[name], took)
        spent += took
    reps += 1
  return {name: n_queries / t for name, t in best.items()}


def same_results(ours, theirs, descending: bool) -> bool:
  """Equal row ids, or (for float ties / last-ulp differences) equal scores at every position."""
  (s1, i1), (s2, i2) = ours, theirs
  if np.array_equal(i1, i2):
    return True
  if descending:  # BLAS kernels may differ in the last bits; the ranked values must agree
    return bool(np.allclose(s1, s2, rtol=1e-5, atol=1e-5))
  return bool(np.array_equal(s1, s2))


def unit(x: np.ndarray) -> np.ndarray:
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def usearch_exact(db, q, k, threads):
  from usearch.index import MetricKind
  from usearch.index import search as usearch_search

  m = usearch_search(db, q.astype(db.dtype), k, MetricKind.IP, exact=True, threads=threads)
  return 1.0 - np.atleast_2d(m.distances), np.atleast_2d(m.keys).astype(np.int64)


def binary_rows(rng, n_rows, k, min_time, mapped_dir=None, burst=8):
  """Rows of rsjax vs FAISS IndexBinaryFlat; with mapped_dir, rsjax searches a memory map."""
  import faiss

  rows = []
  for bits in (64, 256):
    codes = rng.integers(0, 256, size=(n_rows, bits // 8), dtype=np.uint8)
    if mapped_dir is not None:  # as rsjax.index stores and opens chunks
      path = os.path.join(mapped_dir, f"codes{bits}.npy")
      np.save(path, codes)
      codes = np.asarray(np.load(path, mmap_mode="r"))
    words = search.pack_words(codes)
    index = faiss.IndexBinaryFlat(bits)
    index.add(np.ascontiguousarray(codes))
    for batch in (1, 100):
      q = rng.integers(0, 256, size=(batch, bits // 8), dtype=np.uint8)
      qw = search.pack_words(q)
      ours = search.hamming_topk(words, qw, k, bits)

      def faiss_search(heap):
        index.use_heap = heap
        return index.search(q, k)

      for heap in (True, False):
        assert same_results(ours, faiss_search(heap), False), f"binary {bits} bits: results differ"
      rates = best_rates({"rsjax": lambda: search.hamming_topk(words, qw, k, bits),
                          "heap": lambda: faiss_search(True),
                          "counting sort": lambda: faiss_search(False)}, batch, min_time,
                         burst=burst)
      setting = max(("heap", "counting sort"), key=rates.get)
      rows.append({"kind": f"binary {bits}-bit" + (" (memory-mapped)" if mapped_dir else ""),
                   "rows": n_rows, "batch": batch, "k": k, "rsjax_qps": rates["rsjax"],
                   "faiss_qps": rates[setting], "usearch_qps": None,
                   "ratio": rates["rsjax"] / rates[setting], "faiss_setting": setting,
                   "equal": True})
    del index, words, codes
  return rows


def dense_rows(rng, n_rows, dim, k, min_time, threads):
  """float32 and float16 rows: rsjax vs FAISS vs usearch exact; ratio against the best library."""
  import faiss

  vectors = unit(rng.standard_normal((n_rows, dim), dtype=np.float32))
  rows = []
  for dtype in ("float32", "float16"):
    db = vectors if dtype == "float32" else vectors.astype(np.float16)
    if dtype == "float32":
      index = faiss.IndexFlatIP(dim)
      setting = "IndexFlatIP, BLAS threshold 1"
    else:  # FAISS's exact scan of float16 values
      index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16,
                                         faiss.METRIC_INNER_PRODUCT)
      setting = "IndexScalarQuantizer QT_fp16"
    index.add(vectors)
    for batch in (1, 100):
      q = unit(rng.standard_normal((batch, dim), dtype=np.float32))
      ours = search.dense_topk(db, q, k, unit_rows=True)
      equal = same_results(ours, index.search(q, k), True)
      if dtype == "float32":  # usearch's float16 scan rounds the query: compared in float32 only
        equal = equal and same_results(ours, usearch_exact(db, q, k, threads), True)
      assert equal, f"dense {dtype}: results differ"
      rates = best_rates({"rsjax": lambda: search.dense_topk(db, q, k, unit_rows=True),
                          "faiss": lambda: index.search(q, k),
                          "usearch": lambda: usearch_exact(db, q, k, threads)}, batch, min_time,
                         burst=8 if dtype == "float32" else 3)  # FAISS's float16 scan is slow
      best = max(rates["faiss"], rates["usearch"])
      rows.append({"kind": f"dense {dtype} {dim}-d", "rows": n_rows, "batch": batch, "k": k,
                   "rsjax_qps": rates["rsjax"], "faiss_qps": rates["faiss"],
                   "usearch_qps": rates["usearch"], "ratio": rates["rsjax"] / best,
                   "faiss_setting": setting, "equal": equal})
    del index
  return rows


def ann_rows(rng, n_rows, dim, k, min_time, threads):
  """usearch HNSW and FAISS HNSW against exact search over clustered unit vectors."""
  import faiss
  from usearch.index import Index as UIndex

  centers = rng.standard_normal((max(16, n_rows // 1000), dim), dtype=np.float32)
  vectors = unit(centers[rng.integers(0, len(centers), n_rows)]
                 + 0.7 * rng.standard_normal((n_rows, dim), dtype=np.float32))
  db = vectors.astype(np.float16)  # as an index stores them
  queries = unit(centers[rng.integers(0, len(centers), 1000)]
                 + 0.7 * rng.standard_normal((1000, dim), dtype=np.float32))
  exact = search.dense_topk(db, queries, k, unit_rows=True)[1]

  def recall(found):
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, exact)]))

  start = time.perf_counter()
  graph = UIndex(ndim=dim, metric="ip", dtype="f16", connectivity=search_ann.CONNECTIVITY,
                 expansion_add=search_ann.EXPANSION_ADD,
                 expansion_search=search_ann.EXPANSION_SEARCH)
  graph.add(np.arange(n_rows, dtype=np.uint64), vectors, threads=threads)
  u_build = time.perf_counter() - start
  start = time.perf_counter()
  hnsw = faiss.IndexHNSWFlat(dim, search_ann.CONNECTIVITY, faiss.METRIC_INNER_PRODUCT)
  hnsw.hnsw.efConstruction = search_ann.EXPANSION_ADD
  hnsw.add(vectors)
  f_build = time.perf_counter() - start
  hnsw.hnsw.efSearch = search_ann.EXPANSION_SEARCH
  ann = search_ann.AnnIndex(graph, n_rows)
  u_recall = recall(ann.search(queries, k)[1])
  f_recall = recall(hnsw.search(queries, k)[1])
  rows = []
  for batch in (1, 100):
    q = queries[:batch]
    rates = best_rates({"exact": lambda: search.dense_topk(db, q, k, unit_rows=True),
                        "usearch": lambda: ann.search(q, k),
                        "faiss": lambda: hnsw.search(q, k)}, batch, min_time, burst=4)
    rows.append({"kind": f"ann float16 {dim}-d", "rows": n_rows, "batch": batch, "k": k,
                 "exact_qps": rates["exact"], "usearch_hnsw_qps": rates["usearch"],
                 "usearch_recall10": u_recall, "usearch_build_s": u_build,
                 "faiss_hnsw_qps": rates["faiss"], "faiss_recall10": f_recall,
                 "faiss_build_s": f_build,
                 "hnsw": f"M={search_ann.CONNECTIVITY} efC={search_ann.EXPANSION_ADD} "
                         f"ef={search_ann.EXPANSION_SEARCH}"})
  return rows


def main() -> None:
  import faiss
  import usearch

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=1_000_000)
  parser.add_argument("--big-rows", type=int, default=10_000_000)
  parser.add_argument("--ann-rows", type=int, default=1_000_000)
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--ann-dim", type=int, default=128, help="the demo model's embedding width")
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--min-time", type=float, default=2.0, help="seconds of timing per row")
  parser.add_argument("--sections", default="binary,dense,big,ann")
  parser.add_argument("--out", default=None,
                      help="results name (default search: benchmarks/results/search.json)")
  args = parser.parse_args()

  threads = os.cpu_count() or 1
  faiss.omp_set_num_threads(threads)
  faiss.cvar.distance_compute_blas_threshold = 1
  rng = np.random.default_rng(0)
  sections = args.sections.split(",")
  rows = []

  def save(rows):  # after every section: a long run that is stopped keeps what it measured
    report(rows, args.out or __file__, meta={
        "threads": threads, "faiss": faiss.__version__, "usearch": usearch.__version__,
        "numpy": np.__version__, "sections": sections})

  if "binary" in sections:
    rows += binary_rows(rng, args.rows, args.k, args.min_time)
    save(rows)
  if "dense" in sections:
    rows += dense_rows(rng, args.rows, args.dim, args.k, args.min_time, threads)
    save(rows)
  if "big" in sections:
    with tempfile.TemporaryDirectory(dir=os.environ.get("RSJAX_BENCH_TMP")) as tmp:
      rows += binary_rows(rng, args.big_rows, args.k, args.min_time, mapped_dir=tmp, burst=3)
    save(rows)
  if "ann" in sections:
    rows += ann_rows(rng, args.ann_rows, args.ann_dim, args.k, args.min_time, threads)
  save(rows)


if __name__ == "__main__":
  main()
