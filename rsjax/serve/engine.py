"""The server's engine: an index and the model that built it, loaded once, answering queries.

Queries from the page's concurrent requests are serialised by one lock: the numba kernels run
on all threads already, and their workqueue threading layer must not be entered twice at once.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time

import numpy as np

from rsjax import index as index_lib
from rsjax.errors import InputError

MODES = ("dense", "binary", "rerank")
RERANK_DEPTH = 100  # codes re-ranked by dense score in mode "rerank" (at least k)


@dataclasses.dataclass
class Hit:
  row: int
  score: float


def check_model_files(idx: index_lib.Index, path: str) -> None:
  """The tokenizer the index was built with must still be there, unchanged."""
  meta = idx.meta["model"]
  if not meta["tokenizer"] or not os.path.isfile(meta["tokenizer"]):
    raise index_lib.IndexFileError(f"tokenizer {meta['tokenizer']} of index {path} is gone; "
                                   "rebuild the index")
  if meta["tokenizer_digest"] != index_lib.file_digest(meta["tokenizer"]):
    raise index_lib.IndexFileError(f"tokenizer {meta['tokenizer']} changed since the index was "
                                   "built")


class QueryModel:
  """The text tower (and hashing head) of the model that built an index: text -> query vectors."""

  def __init__(self, idx: index_lib.Index, path: str):
    import ml_collections

    from rsjax import parallel, runs
    from rsjax.data.tokenizers import SentencePieceTokenizer
    from rsjax.evaluation import encode

    check_model_files(idx, path)
    meta = idx.meta["model"]
    self.config = ml_collections.ConfigDict(meta["config"])
    self.mesh = parallel.make_mesh(self.config)
    model, self.params, self.step = runs.load_model(self.config, meta["checkpoint"], self.mesh,
                                                    step=meta["step"])
    if index_lib.params_digest(self.params) != meta["params_digest"]:
      raise index_lib.IndexFileError(
          f"checkpoint {meta['checkpoint']} step {self.step} no longer holds the parameters "
          "this index was built with; rebuild the index")
    self.tokenizer = SentencePieceTokenizer(meta["tokenizer"])
    self.context_length = self.config.model.text.context_length
    self._enc_txt = encode.encoders(model)[1]
    self._hash_txt = encode.hash_encoders(model)[1] if idx.bits else None

  def encode(self, texts: list[str], tokens=None) -> tuple[np.ndarray, np.ndarray | None]:
    """texts [Q] -> (dense [Q, E] float32, packed codes [Q, K/8] uint8 or None)."""
    import jax

    from rsjax.evaluation import encode

    if tokens is None:
      tokens = self.tokenizer.encode_with_lengths(texts, self.context_length)[0]
    with jax.set_mesh(self.mesh):
      dense = encode.encode_in_batches(self._enc_txt, self.params, tokens, len(tokens), self.mesh)
      codes = None
      if self._hash_txt is not None:
        codes = encode.encode_in_batches(self._hash_txt, self.params, tokens, len(tokens),
                                         self.mesh).astype(np.uint8)
    return dense, codes


class Engine:
  """Ranked rows of an index for a text query or for one of its own images.

  `query_model`: anything with encode(texts) -> (dense [Q, E], codes [Q, K/8] | None); None
  loads the index's model (QueryModel)."""

  def __init__(self, path: str, verify: bool = True, query_model=None):
    from rsjax.serve import geo

    self.path = os.path.abspath(path)
    self.index = index_lib.load(path, verify=verify)
    if "building" in self.index.meta:
      b = self.index.meta["building"]
      raise index_lib.IndexFileError(f"index {path} is unfinished ({b['done']} of {b['total']} "
                                     "images); rerun its `rsjax index` command to finish it")
    self.query_model = query_model or QueryModel(self.index, path)
    self.geo = geo.Footprints(self.index.footprints)
    self._lock = threading.Lock()

  def warm_up(self) -> None:
    """One query of each mode, so that the first user's query does not wait for compilation."""
    for mode in self.modes:
      self.search_text("warm up", 1, mode)

  @property
  def modes(self) -> tuple[str, ...]:
    return MODES if self.index.bits else ("dense",)

  def check_mode(self, mode: str) -> None:
    if mode not in MODES:
      raise InputError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if mode not in self.modes:
      raise InputError(f"mode {mode!r} needs binary codes; this index has none (its model has no "
                       "hashing head): use mode dense")

  def _rank(self, dense: np.ndarray, codes: np.ndarray | None, k: int, mode: str,
            subset: np.ndarray | None) -> list[Hit]:
    binary = mode in ("binary", "rerank")
    rerank = max(k, RERANK_DEPTH) if mode == "rerank" else 0
    with self._lock:
      scores, rows = self.index.search(dense[None], None if codes is None else codes[None], k=k,
                                       binary=binary, rerank=rerank, subset=subset)
    return [Hit(int(r), float(s)) for s, r in zip(scores[0], rows[0]) if r >= 0]

  def search_text(self, text: str, k: int, mode: str, bbox=None) -> tuple[list[Hit], float]:
    """(hits, seconds spent encoding and searching) for one text query."""
    self.check_mode(mode)
    start = time.perf_counter()
    with self._lock:
      dense, codes = self.query_model.encode([text])
    hits = self._rank(dense[0], None if codes is None else codes[0], k, mode,
                      self.geo.subset(bbox))
    return hits, time.perf_counter() - start

  def similar(self, row: int, k: int, mode: str, bbox=None) -> tuple[list[Hit], float]:
    """(hits, seconds) for "more like this": the index's own vector / code of `row` as query."""
    self.check_mode(mode)
    start = time.perf_counter()
    dense = self.index.dense_rows(np.asarray([row]))[0]
    codes = self.index.code_rows(np.asarray([row]))[0] if mode != "dense" else None
    hits = self._rank(dense, codes, k, mode, self.geo.subset(bbox))
    return hits, time.perf_counter() - start
