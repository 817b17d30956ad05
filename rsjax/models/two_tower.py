"""The retrieval model: an image tower and a text tower meeting in one embedding space."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from rsjax.models.heads import ContrastiveHead, l2_normalize
from rsjax.models.text import TextTransformer
from rsjax.models.vit import VisionTransformer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class TwoTower(nn.Module):
  """encode_image: [B, H, W, 3] -> [B, E] unit norm; encode_text: [B, L] -> [B, E] unit norm.

  `__call__` returns everything the losses need: normalised embeddings plus logit scale and bias.
  """
  config: ml_collections.ConfigDict  # the `model` section of a run config

  def setup(self):
    c = self.config
    dtype = DTYPES[c.dtype]
    kw = dict(dtype=dtype, param_dtype=jnp.float32, remat=c.remat)
    self.image = VisionTransformer(
        width=c.image.width, depth=c.image.depth, heads=c.image.heads,
        patch_size=c.image.patch_size, embed_dim=c.embed_dim, mlp_ratio=c.image.mlp_ratio,
        stem=c.image.stem, pool=c.image.pool, activation=c.activation, **kw)
    self.text = TextTransformer(
        vocab_size=c.text.vocab_size, context_length=c.text.context_length, width=c.text.width,
        depth=c.text.depth, heads=c.text.heads, embed_dim=c.embed_dim, causal=c.text.causal,
        pool=c.text.pool, mlp_ratio=c.text.mlp_ratio, activation=c.activation, **kw)
    self.head = ContrastiveHead(init_logit_scale=c.init_logit_scale)

  def encode_image(self, images: jax.Array) -> jax.Array:
    return l2_normalize(self.image(images)["embedding"])

  def encode_text(self, ids: jax.Array) -> jax.Array:
    return l2_normalize(self.text(ids)["embedding"])

  def __call__(self, images: jax.Array, ids: jax.Array) -> dict:
    img, txt, scale, bias = self.head(self.image(images)["embedding"], self.text(ids)["embedding"])
    return {"image": img, "text": txt, "logit_scale": scale, "logit_bias": bias}
