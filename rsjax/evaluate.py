"""Retrieval evaluation: encode a split on the mesh, score it in tiles on the devices, compute recalls.

The N_img x N_txt similarity matrix is never built on the host: each jitted tile scores a block of
queries against all candidates on the devices and returns only the ranks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rsjax import metrics, parallel

if TYPE_CHECKING:
  from rsjax.data.datasets import EvalSplit


def normalize_images(images: jax.Array) -> jax.Array:
  """uint8 [B, H, W, 3] -> float in [-1, 1]; done on the device to keep host work small."""
  return images.astype(jnp.float32) * (2.0 / 255.0) - 1.0


def encode_in_batches(encode: Callable, params, inputs: np.ndarray, batch_size: int,
                      mesh: Mesh) -> np.ndarray:
  """Runs a jitted `encode(params, x)` over `inputs` [N, ...] in padded global batches.

  Returns [N, E] float32 on the host."""
  dp = parallel.data_parallel_size(mesh)
  batch_size = max(dp, batch_size // dp * dp)
  out = []
  for start in range(0, len(inputs), batch_size):
    chunk = inputs[start: start + batch_size]
    pad = batch_size - len(chunk)
    if pad:  # keep one compiled shape; padded rows are dropped below
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)], 0)
    emb = encode(params, parallel.shard_batch({"x": chunk}, mesh)["x"])
    out.append(np.asarray(jax.device_get(emb))[: batch_size - pad])
  return np.concatenate(out, 0).astype(np.float32)


@jax.jit
def _t2i_tile(img_emb, txt_tile, owners):
  return metrics.text_to_image_ranks(img_emb @ txt_tile.T, owners)


@jax.jit
def _i2t_tile(img_tile, txt_emb, image_ids, text_to_image):
  return metrics.image_to_text_ranks(img_tile @ txt_emb.T, image_ids, text_to_image)


def _tiles(n: int, tile: int):
  for start in range(0, n, tile):
    yield start, min(start + tile, n)


def retrieval_ranks(img_emb: np.ndarray, txt_emb: np.ndarray, text_to_image: np.ndarray,
                    tile: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Ranks for both directions, computed tile by tile. Returns (i2t [N_img], t2i [N_txt])."""
  img = jnp.asarray(img_emb)
  txt = jnp.asarray(txt_emb)
  owners = jnp.asarray(text_to_image, jnp.int32)
  t2i = [_t2i_tile(img, txt[a:b], owners[a:b]) for a, b in _tiles(len(txt_emb), tile)]
  i2t = [_i2t_tile(img[a:b], txt, jnp.arange(a, b, dtype=jnp.int32), owners)
         for a, b in _tiles(len(img_emb), tile)]
  return np.concatenate(jax.device_get(i2t)), np.concatenate(jax.device_get(t2i))


def encoders(model) -> tuple[Callable, Callable]:
  """Jitted (params, uint8 images) -> embeddings and (params, ids) -> embeddings."""
  enc_img = jax.jit(lambda p, x: model.apply({"params": p}, normalize_images(x),
                                             method=model.encode_image))
  enc_txt = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode_text))
  return enc_img, enc_txt


def evaluate_split(model, params, split: "EvalSplit", mesh: Mesh, batch_size: int) -> dict[str, float]:
  """Encodes a split with `model` (a TwoTower) and returns R@1/5/10 both ways and mR (percent)."""
  enc_img, enc_txt = encoders(model)
  with jax.set_mesh(mesh):
    img_emb = encode_in_batches(enc_img, params, split.images, batch_size, mesh)
    txt_emb = encode_in_batches(enc_txt, params, split.tokens, batch_size, mesh)
  i2t, t2i = retrieval_ranks(img_emb, txt_emb, split.text_to_image)
  return metrics.retrieval_metrics(i2t, t2i)


def format_table(rows: dict[str, dict[str, float]]) -> str:
  """{'step 0': metrics, 'step 600': metrics} -> a markdown table of the recalls."""
  keys = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR"]
  lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
  for name, m in rows.items():
    lines.append(f"| {name} | " + " | ".join(f"{m[k]:.2f}" for k in keys) + " |")
  return "\n".join(lines)
