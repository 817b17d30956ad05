"""Feature pyramid on top of a plain ViT, pooled and fused into the global image embedding.

Design (a simple pyramid, as in ViTDet, Li et al. 2022): each level is built from one intermediate
ViT layer by a single resampling step — transposed convolution to go finer than the patch stride,
average pooling to go coarser, a 1x1 convolution otherwise. ViTDet showed this matches a top-down
FPN on a plain ViT without lateral/top-down paths, and it is cheaper; taking each level from a
different depth (earlier layers for finer levels) also mixes low-level detail with high-level
semantics. The stride-4/8 levels keep objects of a few pixels that a stride-16 token averages away.

Each level is pooled (attention pooling by default: a learned query can single out a few positions,
which a mean would dilute; GeM as the alternative), the pooled vectors are concatenated and projected
to the embedding width, and the result is added to the ViT embedding through a scalar gate that
starts at zero, so at initialisation the image embedding is exactly the plain ViT's (an imported CLIP
is unchanged until fine-tuning learns to open the gate).

lateral="pixels" (a hybrid FPN): levels finer than the patch also get a lateral input from the
pixels, a small conv stem of its own (3x3 stride-2 convolutions, one per halving) whose stride-4 /
stride-8 outputs are added to those levels' maps. Without it, the fine levels are upsampled from
stride-16 tokens, in which an object of 2-4 pixels has already been averaged with its surroundings.
The lateral stem is part of the pyramid, behind the same zero gate.

gate_init (model.image.pyramid.gate_init) starts the gate elsewhere, for training from scratch:
measured on the demo recipe, a zero gate hardly opens (0.001 after 1,044 steps), so the pyramid
adds almost nothing to the embedding (docs/evaluation.md).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from rsjax.errors import ConfigError
from rsjax.models.layers import Dtype, LayerNorm, logical

conv_init = logical(nn.initializers.lecun_normal(), (None, None, None, None))


class PatchUpsample(nn.Module):
  """Transposed convolution with kernel = stride = `factor` (no overlap): [B, h, w, D] ->
  [B, h*f, w*f, C].

  The same parameters and outputs as nn.ConvTranspose(C, (f, f), strides=(f, f)), computed as one
  matmul and a depth-to-space reshape: each input token writes its own f x f block. XLA's CPU
  transposed convolution (an input-dilated conv) ran fifteen times slower, forward and backward,
  on a 6 x 6 x 128 -> 24 x 24 x 64 map. flax's ConvTranspose applies the kernel flipped, hence the
  [::-1, ::-1]."""
  channels: int
  factor: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    f = self.factor
    kernel = self.param("kernel", conv_init, (f, f, x.shape[-1], self.channels))
    bias = self.param("bias", nn.initializers.zeros, (self.channels,))
    batch, h, w, _ = x.shape
    x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
    y = jnp.einsum("bhwd,ijdc->bhiwjc", x, kernel[::-1, ::-1])
    return y.reshape(batch, h * f, w * f, self.channels) + bias


class Resample(nn.Module):
  """Token map at stride `source` [B, h, w, D] -> map at stride `target` [B, h*s/t, w*s/t, C]."""
  source: int
  target: int
  channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.target < self.source:
      factor = self.source // self.target
      return PatchUpsample(self.channels, factor, self.dtype, name="up")(x)
    if self.target > self.source:
      factor = self.target // self.source
      x = nn.avg_pool(x, (factor, factor), strides=(factor, factor))
    return nn.Conv(self.channels, (1, 1), dtype=self.dtype, kernel_init=conv_init, name="proj")(x)


class AttentionPool(nn.Module):
  """One learned query attends over the positions of a map: [B, N, C] -> [B, C]."""
  num_heads: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    query = self.param("query", nn.initializers.normal(0.02), (1, 1, channels))
    query = jnp.broadcast_to(query.astype(self.dtype), (x.shape[0], 1, channels))
    out = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype,
                                          name="attn")(query, x)
    return out[:, 0]


class GeMPool(nn.Module):
  """Generalised mean pooling (Radenovic et al. 2018) with a learnable exponent: [B, N, C] -> [B, C]."""
  init_p: float = 3.0
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.param("p", nn.initializers.constant(self.init_p), ())
    x = jnp.maximum(jax.nn.relu(x), self.eps)
    return jnp.mean(x ** p, axis=1) ** (1.0 / p)


LATERALS = ("none", "pixels")


class PixelLaterals(nn.Module):
  """Images [B, H, W, C] -> {stride: [B, H/stride, W/stride, channels]} for each of `strides`
  (powers of two): 3x3 stride-2 convolutions, widths doubling up to `channels`, each output
  taken at its stride through a 1x1 convolution."""
  strides: tuple[int, ...]
  channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[int, jax.Array]:
    for stride in self.strides:
      if stride < 2 or stride & (stride - 1):
        raise ConfigError(f"config key 'model.image.pyramid.strides': a pixel lateral needs "
                          f"power-of-two strides, got {stride}")
    halvings = max(self.strides).bit_length() - 1
    x, out = images.astype(self.dtype), {}
    for i in range(1, halvings + 1):
      width = max(8, self.channels // 2 ** (halvings - i))
      x = nn.gelu(nn.Conv(width, (3, 3), strides=(2, 2), padding="SAME", dtype=self.dtype,
                          kernel_init=conv_init, name=f"conv_s{2 ** i}")(x))
      if 2 ** i in self.strides:
        out[2 ** i] = nn.Conv(self.channels, (1, 1), dtype=self.dtype, kernel_init=conv_init,
                              name=f"proj_s{2 ** i}")(x)
    return out


class FeaturePyramid(nn.Module):
  """Taps {layer: [B, 1+h*w, D]} -> pooled multi-scale vector projected to [B, E], times a zero gate.

  levels: ((tap_layer, stride), ...), e.g. ((2, 4), (5, 8), (8, 16), (11, 32)) for a 12-layer ViT.
  """
  levels: tuple[tuple[int, int], ...]
  patch_size: int
  grid: tuple[int, int]
  channels: int
  embed_dim: int
  pool: str = "attention"
  dtype: Dtype = jnp.float32
  lateral: str = "none"   # "pixels": lateral inputs from the pixels into the levels finer than the patch
  gate_init: float = 0.0  # 0: the plain ViT's embedding at initialisation (converted weights)

  @nn.compact
  def __call__(self, taps: dict[int, jax.Array], regions: bool = False,
               images: jax.Array | None = None) -> dict:
    """`images` [B, H, W, C]: the trunk's input (lateral="pixels" reads it). `regions` adds
    "contributions" {stride: [B, h, w, E]}: what each position of a level adds to the embedding
    when that level's pooling takes it alone (the heat maps' pyramid regions; the same
    parameters, none added)."""
    gh, gw = self.grid
    pooled, maps, alone = [], {}, []
    laterals = {}
    if self.lateral not in LATERALS:
      raise ConfigError(f"config key 'model.image.pyramid.lateral': unknown {self.lateral!r}, "
                        f"choose from {LATERALS}")
    fine = tuple(stride for _, stride in self.levels if stride < self.patch_size)
    if self.lateral == "pixels" and fine:
      laterals = PixelLaterals(fine, self.channels, self.dtype, name="lateral")(images)
    for layer, stride in self.levels:
      tokens = taps[layer][:, 1:]  # drop [CLS]
      fmap = tokens.reshape(tokens.shape[0], gh, gw, tokens.shape[-1])
      fmap = Resample(self.patch_size, stride, self.channels, self.dtype,
                      name=f"resample_s{stride}")(fmap)
      if stride in laterals:
        side = laterals[stride]
        if side.shape[1:3] != fmap.shape[1:3]:
          raise ConfigError(f"config key 'model.image.pyramid.lateral': the stride-{stride} level "
                            f"is {fmap.shape[1]}x{fmap.shape[2]} but the pixels give "
                            f"{side.shape[1]}x{side.shape[2]}; use an image size divisible by "
                            f"the patch size {self.patch_size}")
        fmap = fmap + side
      fmap = LayerNorm(dtype=self.dtype, name=f"norm_s{stride}")(fmap)
      maps[stride] = fmap
      flat = fmap.reshape(fmap.shape[0], -1, self.channels)
      if self.pool == "attention":
        pool = AttentionPool(dtype=self.dtype, name=f"pool_s{stride}")
      elif self.pool == "gem":
        pool = GeMPool(name=f"pool_s{stride}")
      else:
        raise ConfigError(f"config key 'model.image.pyramid.pool': unknown pyramid pooling "
                          f"'{self.pool}' (use 'attention' or 'gem')")
      pooled.append(pool(flat))
      if regions:  # every position pooled on its own: [B * h * w, 1, C] -> [B, h, w, C]
        alone.append(pool(flat.reshape(-1, 1, self.channels)).reshape(fmap.shape))
    fuse = nn.Dense(self.embed_dim, dtype=self.dtype, name="fuse",
                    kernel_init=logical(nn.initializers.lecun_normal(), (None, "embed")))
    fused = fuse(jnp.concatenate(pooled, -1))
    gate = self.param("gate", nn.initializers.constant(self.gate_init), ())
    out = {"embedding": gate * fused, "maps": maps}
    if regions:
      # fuse is affine over the levels' concatenation: a level's share is fuse with the other
      # levels' slots at zero, less fuse(0).
      zero = fuse(jnp.zeros((1, self.channels * len(self.levels)), self.dtype))
      out["contributions"] = {}
      for i, (_, stride) in enumerate(self.levels):
        parts = [alone[i] if j == i else jnp.zeros_like(alone[i]) for j in range(len(alone))]
        out["contributions"][stride] = gate * (fuse(jnp.concatenate(parts, -1)) - zero)
    return out
