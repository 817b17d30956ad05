"""Vision Transformer trunk in the CLIP layout.

conv patch embedding (no bias) -> [CLS] + positional embedding -> ln_pre -> blocks -> ln_post on [CLS]
-> projection. Returns the pooled embedding and the patch tokens / intermediate taps that the feature
pyramid (model-family issue) builds on.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from rsjax.models.layers import Dtype, Encoder, LayerNorm, logical

# CLIP-shaped sizes: (width, depth, heads).
VIT_SIZES = {
    "Ti": (192, 12, 3),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "H": (1280, 32, 16),
}


class VisionTransformer(nn.Module):
  """images [B, H, W, C] float -> dict(embedding [B, E], tokens [B, N, D], taps {i: [B, 1+N, D]})."""
  width: int
  depth: int
  heads: int
  patch_size: int
  embed_dim: int
  mlp_ratio: float = 4.0
  activation: str = "gelu"
  remat: bool = False
  taps: tuple[int, ...] = ()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> dict:
    p = self.patch_size
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                dtype=self.dtype, param_dtype=self.param_dtype,
                kernel_init=logical(nn.initializers.lecun_normal(), (None, None, None, "embed")),
                name="patch_embed")(images.astype(self.dtype))
    batch, gh, gw, _ = x.shape
    x = x.reshape(batch, gh * gw, self.width)
    scale = self.width ** -0.5
    cls = self.param("cls", logical(nn.initializers.normal(scale), ("embed",)),
                     (self.width,), self.param_dtype)
    pos = self.param("pos_embed", logical(nn.initializers.normal(scale), (None, "embed")),
                     (1 + gh * gw, self.width), self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, self.width)), x], 1)
    x = x + pos.astype(self.dtype)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = LayerNorm(**kw, name="ln_pre")(x)
    x, tapped = Encoder(self.depth, self.heads, self.mlp_ratio, self.activation, self.remat,
                        self.taps, **kw, name="encoder")(x)
    pooled = LayerNorm(**kw, name="ln_post")(x[:, 0])
    proj = self.param("proj", logical(nn.initializers.normal(scale), ("embed", None)),
                      (self.width, self.embed_dim), self.param_dtype)
    embedding = pooled @ proj.astype(self.dtype)
    return {"embedding": embedding, "tokens": x[:, 1:], "grid": (gh, gw), "taps": tapped}
