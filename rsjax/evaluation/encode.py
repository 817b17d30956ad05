"""Encoding on the mesh: images and captions -> embeddings and hash codes, in padded batches.

`SplitEncodings` encodes one eval split lazily and once, so that every evaluator of a split
(recalls, hashing, label metrics, the report's gallery) shares the same embeddings.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh

from rsjax import parallel
from rsjax.data.types import EvalSplit
from rsjax.pixels import normalize_images


def encode_in_batches(encode: Callable, params, inputs: np.ndarray, batch_size: int,
                      mesh: Mesh) -> np.ndarray:
  """Runs a jitted `encode(params, x)` over `inputs` [N, ...] in padded global batches.

  `inputs` is whole on every process (a multi-process run encodes each batch across all of them);
  returns [N, E] float32 on the host, on every process."""
  dp = parallel.data_parallel_size(mesh)
  batch_size = max(dp, batch_size // dp * dp)
  out = []
  for start in range(0, len(inputs), batch_size):
    chunk = inputs[start: start + batch_size]
    pad = batch_size - len(chunk)
    if pad:  # keep one compiled shape; padded rows are dropped below
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)], 0)
    emb = encode(params, parallel.shard_whole_batch({"x": chunk}, mesh)["x"])
    out.append(parallel.to_host(emb)[: batch_size - pad])
  return np.concatenate(out, 0).astype(np.float32)


def encoders(model) -> tuple[Callable, Callable]:
  """Jitted (params, uint8 images) -> embeddings and (params, ids) -> embeddings."""
  enc_img = jax.jit(lambda p, x: model.apply({"params": p}, normalize_images(x),
                                             method=model.encode_image))
  enc_txt = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode_text))
  return enc_img, enc_txt


def hash_encoders(model) -> tuple[Callable, Callable]:
  """Jitted (params, uint8 images) -> packed codes uint8 [B, K/8], and (params, ids) -> codes."""
  enc_img = jax.jit(lambda p, x: model.apply({"params": p}, normalize_images(x),
                                             method=model.hash_image))
  enc_txt = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.hash_text))
  return enc_img, enc_txt


def unpack_signs(packed: np.ndarray, bits: int) -> np.ndarray:
  """uint8 [N, K/8] (np.packbits order) -> {-1, +1} float32 [N, K]."""
  on = np.unpackbits(np.asarray(packed, np.uint8), axis=1)[:, :bits]
  return np.where(on > 0, 1.0, -1.0).astype(np.float32)


class SplitEncodings:
  """One split's embeddings and codes, each computed on first use and kept.

  image_emb [M, E], text_emb [T, E] float32; image_signs [M, K], text_signs [T, K] in {-1, +1}
  (K = model.config.hashing.bits; only for a model with a hashing head)."""

  def __init__(self, model, params, split: EvalSplit, mesh: Mesh, batch_size: int):
    self.model, self.params, self.split = model, params, split
    self.mesh, self.batch_size = mesh, batch_size

  def _encode(self, fn: Callable, inputs: np.ndarray) -> np.ndarray:
    with jax.set_mesh(self.mesh):
      return encode_in_batches(fn, self.params, inputs, self.batch_size, self.mesh)

  def with_images(self, images: np.ndarray) -> "SplitEncodings":
    """The same split with other images [M, H, W, 3] (e.g. corrupted): image embeddings and codes
    are encoded anew on first use, the captions' and the compiled encoders are this object's."""
    other = SplitEncodings(self.model, self.params, dataclasses.replace(self.split, images=images),
                           self.mesh, self.batch_size)
    for shared in ("_encoders", "_hash_encoders", "text_emb", "text_signs"):
      if shared in self.__dict__:  # what this object has already computed (cached_property)
        other.__dict__[shared] = self.__dict__[shared]
    return other

  @functools.cached_property
  def _encoders(self):
    return encoders(self.model)

  @property
  def image_encoder(self):
    """The jitted (params, uint8 images) -> embeddings that image_emb is encoded with."""
    return self._encoders[0]

  @property
  def text_encoder(self):
    """The jitted (params, ids) -> embeddings, e.g. for class prompts."""
    return self._encoders[1]

  @property
  def hash_text_encoder(self):
    """The jitted (params, ids) -> packed codes that text_signs is encoded with."""
    return self._hash_encoders[1]

  @functools.cached_property
  def _hash_encoders(self):
    return hash_encoders(self.model)

  @functools.cached_property
  def image_emb(self) -> np.ndarray:
    return self._encode(self._encoders[0], self.split.images)

  @functools.cached_property
  def text_emb(self) -> np.ndarray:
    return self._encode(self._encoders[1], self.split.tokens)

  @property
  def bits(self) -> int:
    return self.model.config.hashing.bits

  @functools.cached_property
  def image_signs(self) -> np.ndarray:
    packed = self._encode(self._hash_encoders[0], self.split.images)
    return unpack_signs(packed.astype(np.uint8), self.bits)

  @functools.cached_property
  def text_signs(self) -> np.ndarray:
    packed = self._encode(self._hash_encoders[1], self.split.tokens)
    return unpack_signs(packed.astype(np.uint8), self.bits)
