"""Heads on top of the tower embeddings: the contrastive head (L2 norm, learnable logit scale and bias)."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """[..., E] -> unit-norm rows, computed in float32."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), eps * eps))


class ContrastiveHead(nn.Module):
  """Normalises both embeddings and holds the learnable temperature.

  Returns (img [B, E], txt [B, E], logit_scale scalar, logit_bias scalar). The scale is exp of a
  parameter clamped at `max_logit_scale` (CLIP clamps at 100) so training cannot blow it up.
  """
  init_logit_scale: float = math.log(1 / 0.07)
  init_logit_bias: float = 0.0
  max_logit_scale: float = math.log(100.0)

  @nn.compact
  def __call__(self, image_embedding: jax.Array, text_embedding: jax.Array):
    log_scale = self.param("logit_scale", nn.initializers.constant(self.init_logit_scale), ())
    bias = self.param("logit_bias", nn.initializers.constant(self.init_logit_bias), ())
    scale = jnp.exp(jnp.minimum(log_scale, self.max_logit_scale))
    return l2_normalize(image_embedding), l2_normalize(text_embedding), scale, bias
