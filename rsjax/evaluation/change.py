"""The `change` evaluator: retrieval of before/after sequences by change captions, both ways, and
the change / no-change head's accuracy, on a change split (images [P, T, H, W, 3]; per-caption
labels "changed" and "change", see rsjax/data/change_synthetic.py).

Relevance is by caption text: many pairs share a caption ("no change", "a road was built across
the middle"), so a caption matches every pair that has this exact caption among its own, and a
pair matches every caption equal to one of its own. (The `retrieval` evaluator's relevance by
pairing would count a "no change" caption's other unchanged pairs as misses.) Recalls are given
for every query (`all`), for the queries of changed and of unchanged pairs, and per change type;
the gallery is always the whole split.

Retrieval as captioning (rsjax/evaluation/captioning.py): BLEU-4 and CIDEr-D of each pair's
top-ranked caption among the other pairs', for all, changed and unchanged pairs.

No-change detection: a pair is called changed when its change logit is > 0; `accuracy` over all
pairs, `changed_recall` (changed pairs called changed), `unchanged_recall`, and `balanced` (their
mean).

With a hashing head, `hashing_recalls` gives the same recalls for the pair codes, ranked by
Hamming distance (ties by index).
"""

from __future__ import annotations

import jax
import numpy as np

from rsjax import metrics
from rsjax.data.captions_grammar import CHANGE_TYPES
from rsjax.evaluation import captioning
from rsjax.evaluation.encode import encode_in_batches
from rsjax.pixels import normalize_images

NAME = "change"


def ranks_by_relevance(sim: np.ndarray, relevant: np.ndarray) -> np.ndarray:
  """Rank of each query's best-ranked relevant item: sim, relevant [Q, N] -> [Q] int (N where a
  query has none). Ties go to the lower index, as in rsjax.metrics.image_to_text_ranks."""
  masked = np.where(relevant, sim, -np.inf)
  best = masked.argmax(1)
  gt = sim[np.arange(len(sim)), best][:, None]
  index = np.arange(sim.shape[1])[None, :]
  better = (sim > gt) | ((sim == gt) & (index < best[:, None]))
  return np.where(relevant.any(1), better.sum(1), sim.shape[1])


def text_relevance(captions: list[str], text_to_pair: np.ndarray, num_pairs: int) -> np.ndarray:
  """[T, P] bool: caption t matches pair p when p has a caption of the same text."""
  _, text_id = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)
  has_text = np.zeros((text_id.max() + 1 if len(text_id) else 0, num_pairs), bool)
  has_text[text_id, text_to_pair] = True
  return has_text[text_id]


def pair_labels(split) -> tuple[np.ndarray, np.ndarray]:
  """(changed [P] bool, change type [P] int index into CHANGE_TYPES) of a change split, from its
  per-caption labels. A negative type is unknown (LEVIR-CC names none; rsjax/data/levir_change.py):
  such pairs count in "changed" but in no per-type row."""
  changed = np.zeros(len(split.images), bool)
  kind = np.zeros(len(split.images), np.int64)
  changed[split.text_to_image] = np.asarray(split.labels["changed"], bool)
  kind[split.text_to_image] = np.asarray(split.labels["change"], np.int64)
  return changed, kind


def change_subsets(changed: np.ndarray, kind: np.ndarray) -> dict[str, np.ndarray]:
  """Pair masks [P] bool: all, changed, unchanged and each change type present."""
  subsets = {"all": np.ones(len(changed), bool), "changed": changed, "unchanged": ~changed}
  subsets.update({name: kind == i for i, name in enumerate(CHANGE_TYPES) if (kind == i).any()})
  return subsets


def subset_recalls(image_vecs: np.ndarray, text_vecs: np.ndarray, relevant: np.ndarray,
                   text_to_pair: np.ndarray, subsets: dict[str, np.ndarray]) -> dict:
  """{subset: R@1/5/10 both ways and mR} ranking by inner product: embeddings [P, E] / [T, E], or
  hash signs in {-1, +1} [P, K] / [T, K] (K - 2 x Hamming distance: the Hamming ranking)."""
  sim = np.asarray(image_vecs, np.float32) @ np.asarray(text_vecs, np.float32).T  # [P, T]
  i2t = ranks_by_relevance(sim, relevant.T)
  t2i = ranks_by_relevance(sim.T, relevant)
  caption_pair = np.asarray(text_to_pair)
  return {name: metrics.retrieval_metrics(i2t[mask], t2i[mask[caption_pair]])
          for name, mask in subsets.items() if mask.any()}


def change_metrics(image_emb: np.ndarray, text_emb: np.ndarray, captions: list[str],
                   text_to_pair: np.ndarray, changed: np.ndarray, kind: np.ndarray,
                   change_logit: np.ndarray | None = None) -> dict:
  """{"recalls": {subset: R@1/5/10 both ways and mR}, "detection": {...}} in percent.

  image_emb [P, E] (change embeddings), text_emb [T, E]; captions [T] with text_to_pair [T];
  changed [P] bool and kind [P] (CHANGE_TYPES index) per pair; change_logit [P] (> 0: changed)."""
  relevant = text_relevance(captions, text_to_pair, len(image_emb))   # [T, P]
  subsets = change_subsets(changed, kind)
  recalls = subset_recalls(image_emb, text_emb, relevant, text_to_pair, subsets)
  out = {"recalls": recalls, "num_pairs": int(len(image_emb)),
         "num_changed": int(changed.sum())}
  if len(image_emb) > 1:  # retrieval as captioning needs other pairs' captions to retrieve
    hypotheses = captioning.retrieved_captions(image_emb, text_emb, captions, text_to_pair)
    refs = captioning.pair_references(captions, text_to_pair, len(image_emb))
    out["captioning"] = {name: captioning.caption_scores(
        [h for h, m in zip(hypotheses, mask) if m], [r for r, m in zip(refs, mask) if m])
        for name, mask in subsets.items() if name in ("all", "changed", "unchanged") and mask.any()}
  if change_logit is not None:
    called = np.asarray(change_logit) > 0
    right = called == changed
    changed_recall = float(100 * right[changed].mean()) if changed.any() else 0.0
    unchanged_recall = float(100 * right[~changed].mean()) if (~changed).any() else 0.0
    out["detection"] = {"accuracy": float(100 * right.mean()), "changed_recall": changed_recall,
                        "unchanged_recall": unchanged_recall,
                        "balanced": 0.5 * (changed_recall + unchanged_recall)}
  return out


def _logit_encoder(model):
  """Jitted (params, uint8 date sequences [B, T, H, W, 3]) -> change logits [B]."""
  return jax.jit(lambda p, x: model.apply({"params": p}, normalize_images(x),
                                          method=model.change_logit))


def unavailable(ctx) -> str | None:
  if "changed" not in ctx.split.labels or ctx.split.images.ndim != 5:
    return f"split '{ctx.split_name}' is not a change split (date sequences with change labels)"
  if not hasattr(ctx.model, "change_logit"):
    return "the model is not a change encoder (model.temporal)"
  return None


def evaluate(ctx) -> dict:
  enc = ctx.encodings
  changed, kind = pair_labels(ctx.split)
  with jax.set_mesh(ctx.mesh):
    logits = encode_in_batches(_logit_encoder(ctx.model), ctx.params, ctx.split.images,
                               ctx.batch_size, ctx.mesh)
  out = change_metrics(enc.image_emb, enc.text_emb, ctx.split.captions, ctx.split.text_to_image,
                       changed, kind, logits.reshape(-1))
  if ctx.model.config.hashing.bits:  # the pair codes, ranked by Hamming distance
    relevant = text_relevance(ctx.split.captions, ctx.split.text_to_image, len(changed))
    out["hashing_recalls"] = subset_recalls(enc.image_signs, enc.text_signs, relevant,
                                            ctx.split.text_to_image, change_subsets(changed, kind))
  return out


def summary(result: dict) -> str:
  r = result["recalls"]
  parts = [f"{name} {r[name]['mR']:.2f}" for name in r]
  line = "change retrieval by caption text, mR (percent): " + ", ".join(parts)
  if "captioning" in result:
    c = result["captioning"]["all"]
    line += f"; top caption BLEU-4 {c['bleu4']:.2f}, CIDEr-D {c['cider_d']:.2f}"
  if "detection" in result:
    d = result["detection"]
    line += (f"; no-change detection: accuracy {d['accuracy']:.2f}, balanced "
             f"{d['balanced']:.2f}")
  if "hashing_recalls" in result:
    h = result["hashing_recalls"]
    line += "; pair codes (Hamming), mR: " + ", ".join(f"{n} {h[n]['mR']:.2f}"
                                                       for n in ("all", "changed", "unchanged")
                                                       if n in h)
  return line
