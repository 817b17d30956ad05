"""Exact search (host kernels and the device-sharded path) against NumPy references, ties included."""

import os

import jax
import numpy as np
import pytest

from rsjax import search


def ref_hamming(db_packed: np.ndarray, q_packed: np.ndarray):
  """Bit-by-bit distances [Q, N] from np.unpackbits."""
  a = np.unpackbits(q_packed, axis=1)[:, None, :]
  b = np.unpackbits(db_packed, axis=1)[None, :, :]
  return (a != b).sum(-1)


def ref_topk(values: np.ndarray, k: int, descending: bool):
  """Stable full sort per row: best first, ties by lower index."""
  order = np.argsort(-values if descending else values, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(values, order, 1), order


@pytest.mark.parametrize("nbytes", [2, 8, 24, 32, 40])  # 16, 64, 192, 256, 320 bits
@pytest.mark.parametrize("n_q", [1, 3, 17])
def test_hamming_topk_matches_reference(nbytes, n_q):
  rng = np.random.default_rng(nbytes * 100 + n_q)
  n = 9000  # several chunks and blocks; few bits -> many ties at every distance
  db = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
  q = rng.integers(0, 256, size=(n_q, nbytes), dtype=np.uint8)
  db[100] = q[0]  # a distance-0 row
  db[5000:5010] = db[100]  # and ties at distance 0 across chunks
  dist = ref_hamming(db, q)
  np.testing.assert_array_equal(search.hamming_distances(search.pack_words(db), search.pack_words(q)), dist)
  for k in (1, 10, 50):
    want_d, want_i = ref_topk(dist, k, descending=False)
    got_d, got_i = search.hamming_topk(search.pack_words(db), search.pack_words(q), k, nbytes * 8)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_d, want_d)


@pytest.mark.parametrize("n_q", [2, 17])  # row-split and grouped (word-major) kernels
def test_hamming_topk_k_larger_than_index(n_q):
  rng = np.random.default_rng(1)
  db = rng.integers(0, 256, size=(5, 8), dtype=np.uint8)
  q = rng.integers(0, 256, size=(n_q, 8), dtype=np.uint8)
  d, i = search.hamming_topk(search.pack_words(db), search.pack_words(q), 8)
  want_d, want_i = ref_topk(ref_hamming(db, q), 5, descending=False)
  np.testing.assert_array_equal(i[:, :5], want_i)
  np.testing.assert_array_equal(d[:, :5], want_d)
  assert (i[:, 5:] == -1).all() and (d[:, 5:] == -1).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("n_q", [1, 6])
def test_dense_topk_matches_reference(dtype, n_q):
  rng = np.random.default_rng(2)
  # Values on a coarse grid: inner products tie often and are exact in float32.
  db = rng.integers(-2, 3, size=(5000, 16)).astype(dtype)
  q = rng.integers(-2, 3, size=(n_q, 16)).astype(np.float32)
  scores = q @ db.astype(np.float32).T
  for k in (1, 10, 40):
    want_s, want_i = ref_topk(scores, k, descending=True)
    got_s, got_i = search.dense_topk(db, q, k, block_rows=700)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_s, want_s)


def test_rerank_orders_candidates_densely():
  rng = np.random.default_rng(3)
  db = rng.integers(-2, 3, size=(300, 8)).astype(np.float32)
  q = rng.integers(-2, 3, size=(4, 8)).astype(np.float32)
  cand = np.stack([rng.permutation(300)[:50] for _ in range(4)])
  cand[0, -3:] = -1  # missing candidates are ignored
  s, i = search.rerank(db, q, cand, 10)
  for row in range(4):
    c = cand[row][cand[row] >= 0]
    sc = db[c] @ q[row]
    order = np.lexsort((c, -sc))[:10]
    np.testing.assert_array_equal(i[row], c[order])
    np.testing.assert_array_equal(s[row], sc[order])


def test_sharded_search_matches_host_search():
  assert jax.device_count() == 8
  rng = np.random.default_rng(4)
  n = 1003  # not a multiple of 8: padding rows must never be returned
  packed = rng.integers(0, 256, size=(n, 4), dtype=np.uint8)  # 32 bits: many ties
  dense = rng.integers(-2, 3, size=(n, 8)).astype(np.float32)
  q_packed = rng.integers(0, 256, size=(5, 4), dtype=np.uint8)
  q_dense = rng.integers(-2, 3, size=(5, 8)).astype(np.float32)
  index = search.ShardedSearch(search.rows_mesh(), dense=dense, words=search.pack_words(packed), bits=32)
  assert len(index.words.sharding.device_set) == 8
  for k in (1, 10, 300):  # 300 > rows per device (126)
    d, i = index.hamming_topk(search.pack_words(q_packed), k)
    want_d, want_i = ref_topk(ref_hamming(packed, q_packed), k, descending=False)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_array_equal(d, want_d)
    s, i = index.dense_topk(q_dense, k)
    want_s, want_i = ref_topk(q_dense @ dense.T, k, descending=True)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_array_equal(s, want_s)


def test_ann_graph_finds_the_exact_neighbours_and_is_dropped_by_an_append(tmp_path):
  """usearch HNSW over 3,000 clustered vectors: recall@10 against exact search near 1; the
  graph is refused once an append leaves rows outside it."""
  import json

  from rsjax import index, search_ann

  rng = np.random.default_rng(0)
  centers = rng.normal(size=(30, 32))
  dense = (centers[rng.integers(0, 30, 3000)] + 0.5 * rng.normal(size=(3000, 32))).astype(np.float32)
  dense /= np.linalg.norm(dense, axis=1, keepdims=True)
  ident = {"config": {"model": {"hashing": {"bits": 0}}}, "checkpoint": "/c", "step": 1,
           "params_digest": "d", "tokenizer": None, "tokenizer_digest": None}
  out = str(tmp_path / "idx")
  index.write_chunk(out, ident, [f"/a/{i}.png" for i in range(2000)], dense[:2000], None)
  index.write_chunk(out, ident, [f"/a/{i}.png" for i in range(2000, 3000)], dense[2000:], None,
                    append=True)
  search_ann.build(index.load(out), log=lambda _: None)
  idx = search_ann.load(out)
  q = dense[rng.choice(3000, 50, replace=False)] + 0.05 * rng.normal(size=(50, 32)).astype(np.float32)
  exact = idx.search(q, k=10)[1]
  approx_scores, approx = idx.search(q, k=10, ann=True)
  recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
  assert recall >= 0.95, recall
  np.testing.assert_allclose(approx_scores[:, 0], idx.search(q, k=1)[0][:, 0], atol=2e-2)
  subset = np.arange(0, 3000, 7)
  filtered = idx.search(q, k=10, ann=True, subset=subset)[1]
  assert np.isin(filtered[filtered >= 0], subset).all()
  index.write_chunk(out, ident, ["/a/new.png"], dense[:1], None, append=True)
  assert "ann" not in json.load(open(os.path.join(out, "index.json")))
  with pytest.raises(index.IndexFileError, match="rsjax index --ann"):
    search_ann.load(out)


def test_float16_rows_few_queries_through_usearch_are_exact():
  """Few queries over float16 unit rows go through usearch's exact scan, proven exact or else
  scanned by rsjax: the same rows as the BLAS path, and ties still go to the lower row."""
  rng = np.random.default_rng(3)
  db = rng.normal(size=(search.USEARCH_MIN_ROWS + 500, 64)).astype(np.float32)
  db = (db / np.linalg.norm(db, axis=1, keepdims=True)).astype(np.float16)
  q = rng.normal(size=(3, 64)).astype(np.float32)
  assert search._dense_topk_usearch(db, q, 10) is not None  # this case takes the usearch path
  fast = search.dense_topk(db, q, 10, unit_rows=True)
  blas = search.dense_topk(db, q, 10)
  np.testing.assert_array_equal(fast[1], blas[1])
  np.testing.assert_allclose(fast[0], blas[0], rtol=1e-5)
  tied = np.repeat(db[:1], len(db), 0)  # every row the same: no proof, rsjax's scan decides
  assert search._dense_topk_usearch(tied, q, 10) is None
  np.testing.assert_array_equal(search.dense_topk(tied, q, 10, unit_rows=True)[1],
                                np.tile(np.arange(10), (3, 1)))
