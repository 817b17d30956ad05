"""Contrastive losses. Embeddings are unit-norm [B, E]; row i of each is a matching pair."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def clip_softmax_loss(image: jax.Array, text: jax.Array, logit_scale: jax.Array) -> jax.Array:
  """Symmetric InfoNCE (CLIP): mean of image->text and text->image cross-entropies over the batch."""
  logits = logit_scale * (image @ text.T)  # [B, B]
  labels = jnp.arange(logits.shape[0])
  i2t = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  t2i = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
  return 0.5 * (i2t.mean() + t2i.mean())


LOSSES = {"clip": clip_softmax_loss}


def contrastive_loss(name: str, outputs: dict) -> jax.Array:
  """Dispatches by config name; `outputs` is the dict TwoTower returns."""
  if name not in LOSSES:
    raise ValueError(f"unknown loss '{name}', choose from {sorted(LOSSES)}")
  return LOSSES[name](outputs["image"], outputs["text"], outputs["logit_scale"])
