"""Pure retrieval metric functions (RS-literature protocol, see DESIGN.md).

Ranks are 0-based positions in a stable descending sort of the scores: an item outranks the
ground truth when its score is higher, or equal with a lower index. This breaks ties
deterministically, the way `np.argsort(-scores, kind="stable")` does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

RECALL_KS = (1, 5, 10)


def text_to_image_ranks(sim: jax.Array, text_to_image: jax.Array) -> jax.Array:
  """Rank of each text's own image among all images.

  sim: [N_img, T] scores of all images against a tile of T texts; text_to_image: [T] image index
  of each text. Returns [T] int32.
  """
  n_img = sim.shape[0]
  gt = jnp.take_along_axis(sim, text_to_image[None, :], axis=0)  # [1, T]
  image_index = jnp.arange(n_img)[:, None]
  better = (sim > gt) | ((sim == gt) & (image_index < text_to_image[None, :]))
  return better.sum(0).astype(jnp.int32)


def image_to_text_ranks(sim: jax.Array, image_ids: jax.Array,
                        text_to_image: jax.Array) -> jax.Array:
  """Rank of the best-ranked own caption of each image among all texts.

  sim: [T_img, N_txt] scores of a tile of images against all texts; image_ids: [T_img] global
  indices of those images; text_to_image: [N_txt]. Returns [T_img] int32 (N_txt where an image has
  no caption). The best own caption is the highest-scoring one, lowest index among ties, so its
  rank is the minimum rank over the image's captions.
  """
  n_txt = sim.shape[1]
  own = text_to_image[None, :] == image_ids[:, None]  # [T_img, N_txt]
  best = jnp.argmax(jnp.where(own, sim, -jnp.inf), axis=1)  # first maximum
  gt = jnp.take_along_axis(sim, best[:, None], axis=1)  # [T_img, 1]
  text_index = jnp.arange(n_txt)[None, :]
  better = (sim > gt) | ((sim == gt) & (text_index < best[:, None]))
  ranks = better.sum(1).astype(jnp.int32)
  return jnp.where(own.any(1), ranks, n_txt)


def recall_at_k(ranks: np.ndarray, k: int) -> float:
  """Percentage of queries whose ground truth is within the top k."""
  ranks = np.asarray(ranks)
  return float(100.0 * np.mean(ranks < k)) if ranks.size else 0.0


def retrieval_metrics(i2t_ranks: np.ndarray, t2i_ranks: np.ndarray) -> dict[str, float]:
  """R@1/5/10 both ways and mR, their mean (AMFMN / GeoRSCLIP / RemoteCLIP), all in percent."""
  out = {}
  for k in RECALL_KS:
    out[f"i2t_r{k}"] = recall_at_k(i2t_ranks, k)
  for k in RECALL_KS:
    out[f"t2i_r{k}"] = recall_at_k(t2i_ranks, k)
  out["mR"] = float(np.mean([out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in RECALL_KS]))
  return out
