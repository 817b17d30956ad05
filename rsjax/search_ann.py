"""Approximate dense search beside the exact kernels: an HNSW graph (usearch) over an index's
dense rows, for archives where the exact scan is too slow.

usearch was chosen over FAISS's IndexHNSWFlat by measurement on this machine (benchmarks/
search.py, docs/benchmarks.md: recall@10 and queries/s at 1,000,000 vectors); it is also a small
runtime dependency, where FAISS is a benchmark-only one. The graph keeps its own copy of the
vectors (float16, inner product), is written to `ann.usearch` in the index folder by `rsjax index
--ann`, recorded in index.json (`ann`: file, rows, size, CRC-32, settings) and memory-mapped on
load (usearch's view). An append drops it (index.write_chunk): it no longer covers every row.
"""

from __future__ import annotations

import os

import numpy as np

FILE = "ann.usearch"
CONNECTIVITY = 16      # graph degree M
EXPANSION_ADD = 128    # efConstruction
EXPANSION_SEARCH = 64  # efSearch at the least (raised to k where k is larger)
ADD_BATCH = 100_000    # rows handed to usearch at a time (float32 copies stay small)


class AnnIndex:
  """An opened HNSW graph: search(queries [Q, D], k, subset) -> (scores [Q, k], rows [Q, k])."""

  def __init__(self, graph, rows: int):
    self.graph, self.rows = graph, rows

  def search(self, queries: np.ndarray, k: int, subset: np.ndarray | None = None):
    from rsjax.search import _check_k

    k = _check_k(k)
    q = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
    self.graph.expansion_search = max(EXPANSION_SEARCH, k)
    if subset is not None:  # a filter: search deeper, keep the rows that pass
      depth = min(self.rows, max(4 * k, k * self.rows // max(1, len(subset))))
      found = self.graph.search(q, depth)
      keys, dist = np.atleast_2d(found.keys), np.atleast_2d(found.distances)
      keep = np.isin(keys, subset) & (keys < self.rows)
      keys = np.where(keep, keys, -1)
    else:
      found = self.graph.search(q, k)
      keys, dist = np.atleast_2d(found.keys), np.atleast_2d(found.distances)
      keys = np.where(keys < self.rows, keys, -1)  # usearch marks missing slots with a huge key
    scores = np.where(keys >= 0, 1.0 - dist, -np.inf).astype(np.float32)  # ip distance = 1 - ip
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    scores, keys = np.take_along_axis(scores, order, 1), np.take_along_axis(keys, order, 1)
    if scores.shape[1] < k:
      pad = ((0, 0), (0, k - scores.shape[1]))
      scores = np.pad(scores, pad, constant_values=-np.inf)
      keys = np.pad(keys, pad, constant_values=-1)
    return scores, keys.astype(np.int64)


def build(idx, threads: int = 0, log=print):
  """An HNSW graph over every dense row of `idx` (chunk by chunk, memory maps read once);
  written to the index folder and recorded in index.json. Returns the new metadata."""
  from usearch.index import Index as UIndex

  from rsjax import index as index_lib

  path = idx.meta["path"]
  graph = UIndex(ndim=int(idx.meta["dim"]), metric="ip", dtype="f16", connectivity=CONNECTIVITY,
                 expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)
  threads = threads or os.cpu_count() or 1
  for c, (dense, _) in enumerate(idx.chunks):
    lo = int(idx.starts[c])
    for start in range(0, len(dense), ADD_BATCH):
      part = np.asarray(dense[start: start + ADD_BATCH], np.float32)
      graph.add(np.arange(lo + start, lo + start + len(part), dtype=np.uint64), part,
                threads=threads)
    log(f"ann: {lo + len(dense)} of {len(idx)} rows in the graph")
  full = os.path.join(path, FILE)
  graph.save(full + ".tmp")
  os.replace(full + ".tmp", full)
  meta = index_lib.read_meta(path)
  meta["ann"] = {"library": "usearch", "kind": "hnsw", "file": FILE, "rows": len(idx),
                 "connectivity": CONNECTIVITY, "expansion_add": EXPANSION_ADD,
                 "expansion_search": EXPANSION_SEARCH, **index_lib.file_record(path, FILE)}
  index_lib.write_meta(path, meta)
  return meta


def load(path: str, verify: bool = True):
  """rsjax.index.load(path) with its graph attached (idx.ann), for Index.search(ann=True)."""
  from rsjax import index as index_lib

  idx = index_lib.load(path, verify=verify)
  idx.ann = open_for(idx, verify)
  return idx


def open_for(idx, verify: bool = True) -> AnnIndex:
  """The graph recorded in idx's index.json, memory-mapped; refused where missing or stale."""
  from usearch.index import Index as UIndex

  from rsjax import index as index_lib

  path, ann = idx.meta["path"], idx.meta.get("ann")
  if ann is None:
    raise index_lib.IndexFileError(f"index {path} has no approximate-search file; build it with "
                                   "`rsjax index --ann` (or search without --ann)")
  if ann["rows"] != len(idx):
    raise index_lib.IndexFileError(f"index {path}: {FILE} covers {ann['rows']} rows of "
                                   f"{len(idx)}; rebuild it with `rsjax index --ann`")
  full = index_lib.check_file(path, ann["file"], ann, verify)
  return AnnIndex(UIndex.restore(full, view=True), len(idx))
