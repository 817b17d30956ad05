"""Index files: save / reload gives identical search results; appends; bad files refused clearly."""

import json
import os

import ml_collections
import numpy as np
import pytest

from rsjax import index


def identity(digest="a" * 32, bits=32):
  config = ml_collections.ConfigDict({"model": {"hashing": {"bits": bits}, "embed_dim": 8}})
  return {"config": json.loads(config.to_json()), "checkpoint": "/ckpt", "step": 3,
          "params_digest": digest, "tokenizer": None, "tokenizer_digest": None}


def random_rows(rng, n, dim=8, bits=32):
  dense = rng.normal(size=(n, dim)).astype(np.float32)
  dense /= np.linalg.norm(dense, axis=1, keepdims=True)
  codes = rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)
  return [f"/archive/img_{i}.png" for i in range(n)], dense, codes


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_saved_index_reloads_to_identical_results(tmp_path, dtype):
  rng = np.random.default_rng(0)
  paths, dense, codes = random_rows(rng, 500)
  q_dense = rng.normal(size=(3, 8)).astype(np.float32)
  q_codes = rng.integers(0, 256, size=(3, 4), dtype=np.uint8)
  store = dense.astype(dtype)
  before = index.Index(meta={"bits": 32}, paths=paths, dense=store, codes=codes)
  index.write_chunk(str(tmp_path / "idx"), identity(), paths, dense, codes, dtype)
  after = index.load(str(tmp_path / "idx"))
  assert after.paths == paths and after.dense.dtype == np.dtype(dtype)
  np.testing.assert_array_equal(after.dense, store)
  np.testing.assert_array_equal(after.codes, codes)
  for kwargs in ({"binary": False}, {"binary": True}, {"binary": True, "rerank": 50}):
    a = before.search(q_dense, q_codes, k=10, **kwargs)
    b = after.search(q_dense, q_codes, k=10, **kwargs)
    for x, y in zip(a, b, strict=True):
      np.testing.assert_array_equal(x, y)
  # And the results are the exact ones.
  d, rows = after.search(q_dense, q_codes, k=10, binary=True)
  want = np.argsort([[bin(int.from_bytes(c, "big") ^ int.from_bytes(q, "big")).count("1")
                      for c in codes] for q in q_codes], axis=1, kind="stable")[:, :10]
  np.testing.assert_array_equal(rows, want)


def test_append_adds_a_chunk_and_keeps_order(tmp_path):
  rng = np.random.default_rng(1)
  p1, d1, c1 = random_rows(rng, 40)
  p2, d2, c2 = random_rows(rng, 25)
  p2 = [p.replace("img", "new") for p in p2]
  out = str(tmp_path / "idx")
  index.write_chunk(out, identity(), p1, d1, c1)
  with pytest.raises(index.IndexFileError, match="already holds an index"):
    index.write_chunk(out, identity(), p2, d2, c2)
  meta = index.write_chunk(out, identity(), p2, d2, c2, append=True)
  assert [c["rows"] for c in meta["chunks"]] == [40, 25]
  loaded = index.load(out)
  assert loaded.paths == p1 + p2
  np.testing.assert_array_equal(loaded.codes, np.concatenate([c1, c2]))
  whole = index.Index(meta={"bits": 32}, paths=p1 + p2,
                      dense=np.concatenate([d1, d2]).astype(np.float16),
                      codes=np.concatenate([c1, c2]))
  q = rng.normal(size=(2, 8)).astype(np.float32)
  np.testing.assert_array_equal(loaded.search(q, k=7)[1], whole.search(q, k=7)[1])


def test_append_with_another_model_is_refused(tmp_path):
  rng = np.random.default_rng(2)
  out = str(tmp_path / "idx")
  paths, dense, codes = random_rows(rng, 10)
  index.write_chunk(out, identity(), paths, dense, codes)
  with pytest.raises(index.IndexFileError, match="another model.*params_digest"):
    index.write_chunk(out, identity(digest="b" * 32), paths, dense, codes, append=True)
  with pytest.raises(index.IndexFileError, match="16 dims"):
    index.write_chunk(out, identity(), paths, np.zeros((10, 16), np.float32), codes, append=True)
  assert len(index.load(out)) == 10  # refused appends changed nothing


def corrupt_cases(out):
  arrays = os.path.join(out, "chunk_00000.dense.npy")

  def flip_byte():
    with open(arrays, "r+b") as f:
      f.seek(os.path.getsize(arrays) // 2)
      b = f.read(1)
      f.seek(-1, 1)
      f.write(bytes([b[0] ^ 0xFF]))

  def truncate():
    with open(arrays, "r+b") as f:
      f.truncate(os.path.getsize(arrays) - 100)

  def bad_json():
    with open(os.path.join(out, "index.json"), "w") as f:
      f.write("{not json")

  def other_version():
    meta = json.load(open(os.path.join(out, "index.json")))
    meta["version"] = 99
    json.dump(meta, open(os.path.join(out, "index.json"), "w"))

  def missing_file():
    os.remove(os.path.join(out, "chunk_00000.json"))

  return {"flip_byte": (flip_byte, "corrupt.*CRC-32"), "truncate": (truncate, "truncated"),
          "bad_json": (bad_json, "not valid JSON"), "other_version": (other_version, "version 99"),
          "missing_file": (missing_file, "chunk_00000.json.*missing")}


@pytest.mark.parametrize("case", ["flip_byte", "truncate", "bad_json", "other_version", "missing_file"])
def test_corrupt_index_is_refused_with_a_clear_message(tmp_path, case):
  rng = np.random.default_rng(3)
  out = str(tmp_path / "idx")
  index.write_chunk(out, identity(), *random_rows(rng, 200))
  index.load(out)
  damage, message = corrupt_cases(out)[case]
  damage()
  with pytest.raises(index.IndexFileError, match=message):
    index.load(out)


def test_not_an_index(tmp_path):
  with pytest.raises(index.IndexFileError, match="not an rsjax index"):
    index.load(str(tmp_path))


def test_index_without_codes_refuses_binary_search(tmp_path):
  rng = np.random.default_rng(4)
  paths, dense, _ = random_rows(rng, 20)
  index.write_chunk(str(tmp_path / "i"), identity(bits=0), paths, dense, None)
  loaded = index.load(str(tmp_path / "i"))
  assert loaded.codes is None
  with pytest.raises(index.IndexFileError, match="no binary codes"):
    loaded.words
  assert loaded.search(dense[:1], k=1)[1][0, 0] == 0


def _is_memory_mapped(arr) -> bool:
  import mmap
  base = arr
  while base is not None:
    if isinstance(base, (np.memmap, mmap.mmap)):
      return True
    base = getattr(base, "base", None)
  return False


def test_chunks_are_memory_mapped_and_searched_chunk_by_chunk(tmp_path):
  rng = np.random.default_rng(5)
  out = str(tmp_path / "idx")
  parts = [random_rows(rng, n, bits=64) for n in (300, 1, 250)]
  all_paths = []
  for n, (paths, dense, codes) in enumerate(parts):
    paths = [p.replace("img", f"c{n}") for p in paths]
    all_paths += paths
    index.write_chunk(out, identity(bits=64), paths, dense, codes, "float32", append=n > 0)
  loaded = index.load(out)
  assert len(loaded.chunks) == 3 and loaded.paths == all_paths
  assert all(_is_memory_mapped(d) and _is_memory_mapped(c) for d, c in loaded.chunks)
  # 64-bit codes: the popcount words are a view of the map, not a copy.
  assert all(_is_memory_mapped(w) for w in loaded.chunk_words())
  dense = np.concatenate([p[1] for p in parts])
  codes = np.concatenate([p[2] for p in parts])
  whole = index.Index(meta={"bits": 64, "dim": 8}, paths=all_paths, dense=dense, codes=codes)
  q_dense = rng.normal(size=(4, 8)).astype(np.float32)
  q_codes = rng.integers(0, 256, size=(4, 8), dtype=np.uint8)
  subset = np.sort(rng.choice(len(all_paths), 120, replace=False))
  for kwargs in ({"binary": False}, {"binary": True}, {"binary": True, "rerank": 40}):
    a = loaded.search(q_dense, q_codes, k=10, **kwargs)
    b = whole.search(q_dense, q_codes, k=10, **kwargs)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    # A row filter (the geographic one): the k best among the subset's rows only.
    got = loaded.search(q_dense, q_codes, k=10, subset=subset, **kwargs)[1]
    sub = index.Index(meta={"bits": 64, "dim": 8}, paths=[all_paths[i] for i in subset],
                      dense=dense[subset], codes=codes[subset])
    np.testing.assert_array_equal(got, subset[sub.search(q_dense, q_codes, k=10, **kwargs)[1]])
  empty = loaded.search(q_dense, k=5, subset=np.zeros(0, np.int64))
  assert (empty[1] == -1).all()


def test_footprints_are_stored_only_where_known(tmp_path):
  rng = np.random.default_rng(6)
  paths, dense, codes = random_rows(rng, 4)
  boxes = np.full((4, 4), np.nan)
  boxes[1] = (2.0, 48.0, 2.1, 48.1)
  index.write_chunk(str(tmp_path / "a"), identity(), paths, dense, codes, footprints=boxes)
  np.testing.assert_array_equal(index.load(str(tmp_path / "a")).footprints, boxes)
  index.write_chunk(str(tmp_path / "b"), identity(), paths, dense, codes,
                    footprints=np.full((4, 4), np.nan))
  assert index.load(str(tmp_path / "b")).footprints is None
  assert not any("geo" in c["arrays"] for c in index.read_meta(str(tmp_path / "b"))["chunks"])


def test_version_1_index_is_still_read_and_appended_to(tmp_path):
  """The earlier format (one .npz per chunk): read into memory; an append adds a version 2 chunk."""
  rng = np.random.default_rng(7)
  out = tmp_path / "old"
  out.mkdir()
  paths, dense, codes = random_rows(rng, 30)
  np.savez(out / "chunk_00000.npz", dense=dense.astype(np.float16), codes=codes)
  json.dump(paths, open(out / "chunk_00000.json", "w"))
  files = {n: index.file_record(str(out), n) for n in ("chunk_00000.npz", "chunk_00000.json")}
  meta = {"format": index.FORMAT, "version": 1, "model": identity(), "dense_dtype": "float16",
          "dim": 8, "bits": 32, "chunks": [{"rows": 30, "arrays": "chunk_00000.npz",
                                             "paths": "chunk_00000.json", "files": files}]}
  json.dump(meta, open(out / "index.json", "w"))
  old = index.load(str(out))
  np.testing.assert_array_equal(old.codes, codes)
  p2, d2, c2 = random_rows(rng, 5)
  index.write_chunk(str(out), identity(), [p.replace("img", "new") for p in p2], d2, c2,
                    append=True)
  both = index.load(str(out))
  assert both.meta["version"] == 2 and len(both) == 35
  np.testing.assert_array_equal(both.codes, np.concatenate([codes, c2]))
