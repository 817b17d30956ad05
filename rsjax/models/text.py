"""Text transformer: causal with end-of-text pooling (CLIP layout) or bidirectional.

token ids [B, L] int32 with 0 as padding -> embedding [B, E]. Pools the last non-padding token, which
is the end-of-text token when the tokenizer appends one (CLIP convention).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from rsjax.models.layers import Dtype, Encoder, LayerNorm, logical

PAD_ID = 0


class TextTransformer(nn.Module):
  """ids [B, L] -> dict(embedding [B, E], tokens [B, L, D])."""
  vocab_size: int
  context_length: int
  width: int
  depth: int
  heads: int
  embed_dim: int
  causal: bool = True
  pool: str = "eot"  # "eot" (CLIP layout) or "mean" over real tokens (learns faster from scratch)
  mlp_ratio: float = 4.0
  activation: str = "gelu"
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array) -> dict:
    batch, length = ids.shape
    if length > self.context_length:
      raise ValueError(f"text length {length} exceeds context_length {self.context_length}")
    embed = self.param("token_embed", logical(nn.initializers.normal(0.02), ("vocab", "embed")),
                       (self.vocab_size, self.width), self.param_dtype)
    pos = self.param("pos_embed", logical(nn.initializers.normal(0.01), (None, "embed")),
                     (self.context_length, self.width), self.param_dtype)
    x = jnp.take(embed, ids, axis=0).astype(self.dtype) + pos[:length].astype(self.dtype)
    valid = ids != PAD_ID  # [B, L]
    # Keys must be real tokens; causal towers also see only earlier positions.
    mask = valid[:, None, None, :]
    if self.causal:
      mask = mask & jnp.tril(jnp.ones((length, length), bool))[None, None]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x, _ = Encoder(self.depth, self.heads, self.mlp_ratio, self.activation, self.remat,
                   (), **kw, name="encoder")(x, mask)
    x = LayerNorm(**kw, name="ln_final")(x)
    if self.pool == "eot":
      last = jnp.maximum(valid.sum(-1) - 1, 0)  # index of the end-of-text token
      pooled = x[jnp.arange(batch), last]
    elif self.pool == "mean":
      weights = valid.astype(x.dtype)[..., None]
      pooled = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
    else:
      raise ValueError(f"unknown text pooling '{self.pool}' (use 'eot' or 'mean')")
    proj = self.param("proj", logical(nn.initializers.normal(self.width ** -0.5), ("embed", None)),
                      (self.width, self.embed_dim), self.param_dtype)
    return {"embedding": pooled @ proj.astype(self.dtype), "tokens": x}
