"""Pure retrieval metric functions (RS-literature protocol, docs/evaluation.md).

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


def average_precision_at_k(rel, k: int | None = None, xp=np):
  """AP@k of each query from its relevance in rank order: rel [Q, N] (0/1 floats) -> [Q].

  AP@k = sum_{r <= k} P(r) rel(r) / (relevant items in the top k), 0 where the top k holds none
  (the DCMH / DUCH convention). `xp` is numpy (float64 host rankings) or jax.numpy (on-device
  Hamming rankings): one definition serves dense and binary retrieval."""
  if k is not None:
    rel = rel[:, :k]
  hits = xp.cumsum(rel, axis=1)
  precision = hits / xp.arange(1, rel.shape[1] + 1, dtype=rel.dtype)
  found = hits[:, -1]
  return xp.where(found > 0, xp.sum(precision * rel, axis=1) / xp.maximum(found, 1), 0.0)


def dense_average_precision(scores: np.ndarray, relevant: np.ndarray,
                            k: int | None = None) -> np.ndarray:
  """AP@k of each query of a dense ranking (higher score first; ties by lower index).

  scores [Q, N] float, relevant [Q, N] bool -> [Q] float64 in [0, 1]."""
  order = np.argsort(-scores, axis=1, kind="stable")
  if k is not None:
    order = order[:, :k]
  rel = np.take_along_axis(relevant, order, axis=1).astype(np.float64)
  return average_precision_at_k(rel)


# ---------------------------------------------------------------------------------------------
# Hashing: Hamming ranking (DUCH protocol). Items are ranked by Hamming distance to the query,
# ties by the lower database index (a stable sort). Relevance: a query and a database item are
# relevant when their group ids are equal -- the scene label (DUCH), or the image index for
# relevance by pairing (a caption's id is its image's index).

HASH_KS = (20, 100, None)  # None: all items ("mAP@all")
HAMMING_RADIUS = 2


def hamming_from_codes(query_codes: jax.Array, db_codes: jax.Array) -> jax.Array:
  """{-1, +1} codes [Q, K], [N, K] -> Hamming distances [Q, N] int32.

  d = (K - <q, b>) / 2; the inner products are small integers, exact in float32."""
  bits = query_codes.shape[-1]
  dots = jnp.einsum("qk,nk->qn", query_codes.astype(jnp.float32), db_codes.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)
  return jnp.round((bits - dots) * 0.5).astype(jnp.int32)


def hamming_ranking_stats(dist: jax.Array, relevant: jax.Array, ks: tuple[int, ...],
                          bits: int, radius: int = HAMMING_RADIUS) -> dict[str, jax.Array]:
  """Per-query hashing statistics for a tile of queries.

  dist: [T, N] int32 Hamming distances; relevant: [T, N] bool; ks: cut-offs (each <= N).
  AP@K = sum_{r <= K} P(r) rel(r) / (relevant items in the top K), 0 when there are none (the
  DCMH / DUCH evaluation code); P@K = relevant in the top K / K. Returns per-query arrays
  ap@K, p@K [T] float32, radius_hits / radius_found [T] int32 (relevant / all items within
  `radius`), and the per-radius counts found [T, bits+1], hits [T, bits+1] (items, relevant items
  at distance <= r) and total relevant [T], from which precision-recall curves are drawn.
  """
  order = jnp.argsort(dist, axis=1, stable=True)
  rel = jnp.take_along_axis(relevant, order, axis=1).astype(jnp.float32)  # [T, N] in rank order
  cum = jnp.cumsum(rel, axis=1)
  out = {}
  for k in ks:
    out[f"ap@{k}"] = average_precision_at_k(rel, k, xp=jnp)
    out[f"p@{k}"] = cum[:, k - 1] / k
  within = dist <= radius
  out["radius_found"] = within.sum(1).astype(jnp.int32)
  out["radius_hits"] = (within & relevant).sum(1).astype(jnp.int32)
  by_distance = jax.vmap(lambda d, r: jnp.zeros(bits + 1, jnp.int32).at[d].add(r))
  out["found"] = jnp.cumsum(by_distance(dist, jnp.ones_like(dist)), axis=1)
  out["hits"] = jnp.cumsum(by_distance(dist, relevant.astype(jnp.int32)), axis=1)
  out["relevant"] = relevant.sum(1).astype(jnp.int32)
  return out


def summarize_hashing(stats: dict[str, np.ndarray], ks: tuple[int, ...],
                      names: tuple) -> dict:
  """Per-query statistics (all queries) -> mAP@K, P@K, radius precision, PR curve (percent).

  `names` gives the label of each cut-off in `ks` (e.g. 20, 100, 'all'). Precision within the
  radius counts a query that finds nothing as 0. The PR curve has one point per radius r: the mean
  over queries of precision (over queries that find something at r) and recall (over queries that
  have a relevant item)."""
  out = {}
  for k, name in zip(ks, names, strict=True):
    out[f"map@{name}"] = float(100.0 * np.mean(stats[f"ap@{k}"]))
    out[f"p@{name}"] = float(100.0 * np.mean(stats[f"p@{k}"]))
  found, hits = stats["radius_found"], stats["radius_hits"]
  out[f"p_r{HAMMING_RADIUS}"] = float(100.0 * np.mean(
      np.where(found > 0, hits / np.maximum(found, 1), 0.0)))
  precision, recall = [], []
  has_rel = stats["relevant"] > 0
  for r in range(stats["found"].shape[1]):
    f, h = stats["found"][:, r], stats["hits"][:, r]
    precision.append(float(np.mean(h[f > 0] / f[f > 0])) if (f > 0).any() else 0.0)
    recall.append(float(np.mean(h[has_rel] / stats["relevant"][has_rel])) if has_rel.any() else 0.0)
  out["pr_curve"] = {"radius": list(range(len(precision))), "precision": precision,
                     "recall": recall}
  return out


# ---------------------------------------------------------------------------------------------
# Zero-shot classification.


def zero_shot_predictions(image_emb: jax.Array, class_emb: jax.Array) -> jax.Array:
  """Unit-norm image [N, E] and class [C, E] embeddings -> predicted class [N] int32 (first
  maximum on ties)."""
  return jnp.argmax(image_emb @ class_emb.T, axis=1).astype(jnp.int32)


def classification_metrics(pred: np.ndarray, labels: np.ndarray,
                           class_names: list[str]) -> dict:
  """Top-1 accuracy and per-class accuracy (percent)."""
  pred, labels = np.asarray(pred), np.asarray(labels)
  per_class = {name: float(100.0 * np.mean(pred[labels == c] == c))
               for c, name in enumerate(class_names) if (labels == c).any()}
  return {"top1": float(100.0 * np.mean(pred == labels)) if labels.size else 0.0,
          "mean_per_class": float(np.mean(list(per_class.values()))) if per_class else 0.0,
          "per_class": per_class}
