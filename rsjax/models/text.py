"""Text transformer: causal with end-of-text pooling (CLIP layout) or bidirectional.

token ids [B, L] int32 with 0 as padding -> embedding [B, E]. Pools the last non-padding token, which
is the end-of-text token when the tokenizer appends one (CLIP convention).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from rsjax.errors import ConfigError
from rsjax.models.heads import ProjectionHead
from rsjax.models.layers import Dtype, Encoder, LayerNorm, logical
from rsjax.models.peft import OFF, Settings

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
  # "eot" (CLIP layout: the end-of-text token), "cls" (a learned token prepended; use with
  # causal=False) or "mean" over real tokens (learns fastest from scratch). "argmax" pools the
  # position of the largest id, as OpenAI CLIP / open_clip do: with CLIP's BPE the end-of-text id
  # is the largest, and id 0 is also the symbol '!', so no key is masked as padding (causal
  # attention alone keeps the padding after end-of-text out of the pooled token).
  pool: str = "eot"
  mlp_ratio: float = 4.0
  activation: str = "gelu"
  remat: str = "none"
  scan: bool = False
  projection: str = "linear"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  peft: Settings = OFF  # LoRA / adapters in the encoder's blocks

  @nn.compact
  def __call__(self, ids: jax.Array, per_token: bool = False) -> dict:
    """`per_token` adds "token_embeddings" [B, L, E]: each position's token through the projection
    of the pooled embedding (the same parameters; a learned [CLS] is left out)."""
    batch, length = ids.shape
    if length > self.context_length:
      raise ValueError(f"text length {length} exceeds context_length {self.context_length}")
    embed = self.param("token_embed", logical(nn.initializers.normal(0.02), ("vocab", "embed")),
                       (self.vocab_size, self.width), self.param_dtype)
    pos = self.param("pos_embed", logical(nn.initializers.normal(0.01), (None, "embed")),
                     (self.context_length, self.width), self.param_dtype)
    x = jnp.take(embed, ids, axis=0).astype(self.dtype) + pos[:length].astype(self.dtype)
    valid = ids != PAD_ID  # [B, L]
    if self.pool == "argmax":
      if not self.causal:
        raise ConfigError("config key 'model.text.pool': 'argmax' needs model.text.causal=True: "
                          "it leaves padding keys unmasked")
      valid = jnp.ones_like(valid)
    if self.pool == "cls":
      if self.causal:
        raise ConfigError("config key 'model.text.pool': 'cls' needs model.text.causal=False: a "
                          "causal first token sees nothing")
      cls = self.param("cls", logical(nn.initializers.normal(0.02), ("embed",)), (self.width,),
                       self.param_dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, self.width)), x], 1)
      valid = jnp.concatenate([jnp.ones((batch, 1), bool), valid], 1)
      length += 1
    # Keys must be real tokens; causal towers also see only earlier positions.
    mask = valid[:, None, None, :]
    if self.causal:
      mask = mask & jnp.tril(jnp.ones((length, length), bool))[None, None]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x, _ = Encoder(self.depth, self.heads, self.mlp_ratio, self.activation, self.remat,
                   self.scan, (), **kw, peft=self.peft, name="encoder")(x, mask)
    x = LayerNorm(**kw, name="ln_final")(x)
    if self.pool == "cls":
      pooled = x[:, 0]
    elif self.pool == "eot":
      last = jnp.maximum(valid.sum(-1) - 1, 0)  # index of the end-of-text token
      pooled = x[jnp.arange(batch), last]
    elif self.pool == "argmax":
      pooled = x[jnp.arange(batch), jnp.argmax(ids, axis=-1)]
    elif self.pool == "mean":
      weights = valid.astype(x.dtype)[..., None]
      pooled = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
    else:
      raise ConfigError(f"config key 'model.text.pool': unknown text pooling '{self.pool}' (use "
                        "'eot', 'argmax', 'cls' or 'mean')")
    proj = ProjectionHead(self.embed_dim, self.projection, name="proj")
    out = {"embedding": proj(pooled), "tokens": x}
    if per_token:
      out["token_embeddings"] = proj(x[:, 1:] if self.pool == "cls" else x)
    return out
