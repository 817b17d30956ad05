"""The `hashing` evaluator: Hamming ranking of the hashing head's codes, both directions.

mAP@K, P@K, precision within Hamming radius 2 and the precision-recall curve, with relevance by
pairing (an image and its own captions) and, on labelled splits, by scene label under the DUCH
split (20% queries, 80% retrieval set), also for the leading 16 and 32 bits (`prefix`: the nested
codes of train.hash_prefix_bits). Queries are ranked on the devices, one tile at a time. With the
metrics come the codes' diagnostics (rsjax/evaluation/hash_diagnostics.py): bit balance, bit
correlation per prefix and the fraction of saturated units.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rsjax import metrics
from rsjax.evaluation import hash_diagnostics
from rsjax.evaluation.encode import encode_in_batches
from rsjax.evaluation.recalls import tiles
from rsjax.pixels import normalize_images

NAME = "hashing"
PREFIX_BITS = (16, 32, 64)  # leading code lengths scored by label (those shorter than K)


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
  retrieval images, and captions of the query images against the retrieval images; and the same
  mAP@20 for each leading prefix of PREFIX_BITS shorter than the code (`prefix`: {bits: {i2t,
  t2i}})."""
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
    out["prefix"] = {}
    for bits in (b for b in PREFIX_BITS if b < img_codes.shape[1]):
      i2t = hashing_metrics(img_codes[queries, :bits], txt_codes[db_txt, :bits], labels[queries],
                            text_labels[db_txt], tile, ks=(20,))
      t2i = hashing_metrics(txt_codes[q_txt, :bits], img_codes[retrieval, :bits],
                            text_labels[q_txt], labels[retrieval], tile, ks=(20,))
      out["prefix"][str(bits)] = {"i2t": i2t["map@20"], "t2i": t2i["map@20"]}
  return out


def relaxed_image_codes(ctx, beta: float) -> np.ndarray:
  """tanh(beta * z) of the split's images [M, K] (the training relaxation at sharpness beta)."""
  model = ctx.model
  fn = jax.jit(lambda p, x: model.apply(
      {"params": p}, normalize_images(x),
      method=lambda m, x: m.image_hash(m.image_embedding(x), beta)))
  with jax.set_mesh(ctx.mesh):
    return encode_in_batches(fn, ctx.params, ctx.split.images, ctx.batch_size, ctx.mesh)


def diagnostics(ctx) -> dict:
  """hash_diagnostics of the split's image and text codes; saturation of the image units at the
  run's final sharpness model.hashing.beta_end."""
  enc = ctx.encodings
  relaxed = relaxed_image_codes(ctx, float(ctx.model.config.hashing.beta_end))
  return {"image": hash_diagnostics.code_diagnostics(enc.image_signs, PREFIX_BITS, relaxed),
          "text": hash_diagnostics.code_diagnostics(enc.text_signs, PREFIX_BITS),
          "beta": float(ctx.model.config.hashing.beta_end),
          "saturation_threshold": hash_diagnostics.SATURATION}


def unavailable(ctx) -> str | None:
  if not ctx.model.config.hashing.bits:
    return "the model has no hashing head (model.hashing.bits = 0)"
  return None


def evaluate(ctx) -> dict:
  enc = ctx.encodings
  out = evaluate_hashing(enc.image_signs, enc.text_signs, ctx.split.text_to_image,
                         ctx.image_labels)
  out["bits"] = enc.bits
  out["diagnostics"] = diagnostics(ctx)
  return out


def summary(result: dict) -> str:
  m = result["pairing"]
  line = (f"{result['bits']}-bit codes, relevance by pairing (percent): mAP@20 i2t "
          f"{m['i2t']['map@20']:.2f}, t2i {m['t2i']['map@20']:.2f}")
  if "label" in result:
    per = [f"{b} bits i2t {v['i2t']:.2f} t2i {v['t2i']:.2f}"
           for b, v in result.get("prefix", {}).items()]
    per.append(f"{result['bits']} bits i2t {result['label']['i2t']['map@20']:.2f} "
               f"t2i {result['label']['t2i']['map@20']:.2f}")
    line += "; relevance by label, mAP@20: " + ", ".join(per)
  if "diagnostics" in result:
    line += "\n" + hash_diagnostics.summary(result["diagnostics"])
  return line
