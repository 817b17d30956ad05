"""The `labels` evaluator: retrieval by scene label, the metrics of label-only sets (RSSCN7).

A classification set has no captions of its own; a model trained on class-prompt captions is judged
as the RS hashing literature does, with relevance = same class:
- zero-shot top-1: each image takes the class whose prompt embedding is nearest;
- text -> image mAP: each class prompt ranks all images (mAP over the whole ranking);
- image -> image mAP@20 with dense embeddings and with K-bit codes, under the DUCH split of the
  images (20% queries, 80% retrieval set).

Dense rankings break ties by the lower index (a stable sort), Hamming rankings likewise
(rsjax.metrics.hamming_ranking_stats), so every figure is deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rsjax import metrics
from rsjax.data.annotated import prompt_templates
from rsjax.evaluation.hashing import duch_query_split, hashing_metrics
from rsjax.evaluation.zero_shot import class_embeddings

NAME = "labels"
I2I_K = 20
CODE_BITS = (16, 32, 64)


def simhash_codes(emb: np.ndarray, bits: int, seed: int = 0) -> np.ndarray:
  """Codes of a model without a hashing head: sign of a fixed Gaussian projection (SimHash).

  emb [N, E] -> [N, bits] float32 in {-1, +1} (sign(0) = +1, as rsjax's hashing head). The same
  seed gives the same projection, so two models of equal width are coded alike."""
  planes = np.random.default_rng(seed).standard_normal((emb.shape[1], bits)).astype(np.float32)
  return np.where(np.asarray(emb, np.float32) @ planes >= 0, 1.0, -1.0).astype(np.float32)


def label_metrics(image_emb: np.ndarray, labels: np.ndarray, class_emb: np.ndarray,
                  codes: Mapping[int, np.ndarray] | None = None, seed: int = 0) -> dict:
  """All label-relevance metrics of one split (percent).

  image_emb [N, E] and class_emb [C, E] unit-norm; labels [N] int in [0, C); codes: {bits: [N, bits]
  in {-1, +1}} (e.g. prefixes of a hashing head's codes, or simhash_codes). Returns zero_shot_top1,
  t2i_map, i2i_map@20_dense and i2i_map@20_{bits}bit for each code length."""
  image_emb = np.asarray(image_emb, np.float32)
  class_emb = np.asarray(class_emb, np.float32)
  labels = np.asarray(labels, np.int64)
  if len(image_emb) != len(labels):
    raise ValueError(f"{len(image_emb)} image embeddings but {len(labels)} labels")
  if labels.size and (labels.min() < 0 or labels.max() >= len(class_emb)):
    raise ValueError(f"labels must lie in [0, {len(class_emb)}), got {labels.min()}..{labels.max()}")
  scores = class_emb @ image_emb.T  # [C, N]
  pred = np.argmax(scores, axis=0)  # first maximum on ties
  out = {"zero_shot_top1": float(100.0 * np.mean(pred == labels)),
         "t2i_map": float(100.0 * metrics.dense_average_precision(
             scores, labels[None, :] == np.arange(len(class_emb))[:, None]).mean())}
  queries, retrieval = duch_query_split(len(labels), seed)
  relevant = labels[queries][:, None] == labels[retrieval][None, :]
  dense = image_emb[queries] @ image_emb[retrieval].T
  out[f"i2i_map@{I2I_K}_dense"] = float(
      100.0 * metrics.dense_average_precision(dense, relevant, I2I_K).mean())
  for bits, c in sorted((codes or {}).items()):
    c = np.asarray(c, np.float32)
    if c.shape != (len(labels), bits):
      raise ValueError(f"{bits}-bit codes have shape {c.shape}, expected {(len(labels), bits)}")
    hashed = hashing_metrics(c[queries], c[retrieval], labels[queries], labels[retrieval],
                             ks=(I2I_K,))
    out[f"i2i_map@{I2I_K}_{bits}bit"] = hashed[f"map@{I2I_K}"]
  return out


def image_labels(split) -> np.ndarray | None:
  """Per-image class ids [M] of an EvalSplit whose captions carry labels["scene"], else None."""
  scene = split.labels.get("scene")
  if scene is None:
    return None
  out = np.zeros(len(split.images), np.int64)
  out[split.text_to_image] = scene
  return out


def config_templates(config) -> tuple[str, ...]:
  """The class prompts of a run: eval.templates, else the data set's data.label_prompt."""
  return tuple(config.eval.get("templates", ())) or prompt_templates(config.data)


def unavailable(ctx) -> str | None:
  if not ctx.class_names or ctx.image_labels is None:
    return ("it needs a labelled data set (data.name='annotated' with data.label_prompt), and "
            f"split '{ctx.split_name}' has no class labels")
  return None


def evaluate(ctx) -> dict:
  """label_metrics of the model on ctx.split; codes are the leading 16/32/64 bits of the hashing
  head's codes (those not longer than model.hashing.bits)."""
  templates = tuple(t.replace("{label}", "{}") for t in config_templates(ctx.config))
  enc = ctx.encodings
  classes = class_embeddings(enc.text_encoder, ctx.params, ctx.tokenizer, ctx.class_names,
                             templates, ctx.model.config.text.context_length, ctx.mesh,
                             ctx.batch_size)
  img = enc.image_emb
  img = img / np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)
  codes = {}
  if enc.bits:
    codes = {b: enc.image_signs[:, :b] for b in CODE_BITS if b <= enc.bits}
  return label_metrics(img, ctx.image_labels, classes, codes)


def summary(result: dict) -> str:
  """One log line of label_metrics."""
  m = result
  parts = [f"zero-shot top-1 {m['zero_shot_top1']:.2f}", f"t2i mAP {m['t2i_map']:.2f}"]
  parts += [f"i2i {k.split('_', 2)[-1]} {v:.2f}" for k, v in m.items() if k.startswith("i2i_")]
  return "relevance by class (percent): " + ", ".join(parts)
