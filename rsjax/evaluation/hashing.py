"""The `hashing` evaluator: Hamming ranking of the hashing head's codes, both directions.

mAP@K, P@K, precision within Hamming radius 2 and the precision-recall curve, with relevance by
pairing (an image and its own captions) and, on labelled splits, by scene label under the DUCH
split (20% queries, 80% retrieval set). Queries are ranked on the devices, one tile at a time.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rsjax import metrics
from rsjax.evaluation.recalls import tiles

NAME = "hashing"


@functools.partial(jax.jit, static_argnames=("ks", "bits"))
def _hash_tile(q_codes, db_codes, q_ids, db_ids, ks, bits):
  dist = metrics.hamming_from_codes(q_codes, db_codes)
  relevant = q_ids[:, None] == db_ids[None, :]
  return metrics.hamming_ranking_stats(dist, relevant, ks, bits)


def hashing_metrics(q_codes: np.ndarray, db_codes: np.ndarray, q_ids: np.ndarray,
                    db_ids: np.ndarray, tile: int = 256,
                    ks: Sequence[int | None] = metrics.HASH_KS) -> dict:
  """mAP@K, P@K, precision within radius 2 and the PR curve of Hamming ranking (percent).

  q_codes [Q, K], db_codes [N, K] in {-1, +1}; a query and an item are relevant when their ids
  ([Q], [N] int) are equal. Queries are scored `tile` at a time on the devices; only per-query
  statistics come back to the host. K larger than N is cut to N (the name keeps the asked K)."""
  n, bits = db_codes.shape
  names = tuple("all" if k is None else k for k in ks)
  cut = tuple(n if k is None else min(k, n) for k in ks)
  uniq = tuple(sorted(set(cut)))
  db = jnp.asarray(db_codes, jnp.float32)
  db_ids_dev = jnp.asarray(db_ids, jnp.int32)
  parts = []
  for a, b in tiles(len(q_codes), tile):
    parts.append(jax.device_get(_hash_tile(jnp.asarray(q_codes[a:b], jnp.float32), db,
                                           jnp.asarray(q_ids[a:b], jnp.int32), db_ids_dev,
                                           uniq, bits)))
  stats = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
  for k, c in zip(ks, cut, strict=True):  # stats are keyed by the cut-off actually used
    stats[f"ap@{k}"], stats[f"p@{k}"] = stats[f"ap@{c}"], stats[f"p@{c}"]
  return metrics.summarize_hashing(stats, tuple(ks), names)


def duch_query_split(n: int, seed: int = 0, query_fraction: float = 0.2):
  """DUCH protocol on a held-out set of n items: 20% queries, 80% retrieval set (seeded).

  Returns (query indices, retrieval indices), each sorted."""
  order = np.random.default_rng(seed).permutation(n)
  n_q = max(1, int(round(n * query_fraction)))
  return np.sort(order[:n_q]), np.sort(order[n_q:])


def evaluate_hashing(img_codes: np.ndarray, txt_codes: np.ndarray, text_to_image: np.ndarray,
                     image_labels: np.ndarray | None = None, seed: int = 0,
                     tile: int = 256) -> dict:
  """Cross-modal hashing metrics in both directions.

  Relevance by pairing over the whole split (an image and its own captions). With scene labels
  [M] also relevance by label under the DUCH split: image queries against the captions of the
  retrieval images, and captions of the query images against the retrieval images."""
  m = len(img_codes)
  own = np.arange(m)
  out = {"pairing": {
      "i2t": hashing_metrics(img_codes, txt_codes, own, text_to_image, tile),
      "t2i": hashing_metrics(txt_codes, img_codes, text_to_image, own, tile)}}
  if image_labels is not None:
    labels = np.asarray(image_labels)
    queries, retrieval = duch_query_split(m, seed)
    q_txt = np.flatnonzero(np.isin(text_to_image, queries))
    db_txt = np.flatnonzero(np.isin(text_to_image, retrieval))
    text_labels = labels[text_to_image]
    out["label"] = {
        "i2t": hashing_metrics(img_codes[queries], txt_codes[db_txt], labels[queries],
                               text_labels[db_txt], tile),
        "t2i": hashing_metrics(txt_codes[q_txt], img_codes[retrieval], text_labels[q_txt],
                               labels[retrieval], tile)}
  return out


def unavailable(ctx) -> str | None:
  if not ctx.model.config.hashing.bits:
    return "the model has no hashing head (model.hashing.bits = 0)"
  return None


def evaluate(ctx) -> dict:
  enc = ctx.encodings
  out = evaluate_hashing(enc.image_signs, enc.text_signs, ctx.split.text_to_image,
                         ctx.image_labels)
  out["bits"] = enc.bits
  return out


def summary(result: dict) -> str:
  m = result["pairing"]
  return (f"{result['bits']}-bit codes, relevance by pairing (percent): mAP@20 i2t "
          f"{m['i2t']['map@20']:.2f}, t2i {m['t2i']['map@20']:.2f}")
