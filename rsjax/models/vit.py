"""Vision Transformer trunk in the CLIP layout, with an optional feature pyramid.

patch embedding -> [CLS] + positional embedding -> ln_pre -> blocks -> ln_post on the pooled token
-> projection. The parameter layout maps one to one onto CLIP checkpoints (conv1 without bias,
class_embedding, positional_embedding, ln_pre, pre-LN blocks, ln_post, proj). Intermediate layers
can be tapped; the feature pyramid builds multi-scale maps from them and adds its pooled vector to
the embedding through a zero-initialised gate.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rsjax.errors import ConfigError
from rsjax.models.heads import ProjectionHead
from rsjax.models.layers import Dtype, Encoder, LayerNorm, logical
from rsjax.models.peft import OFF, Settings
from rsjax.models.pyramid import FeaturePyramid
from rsjax.pixels import CLIP_MEAN, CLIP_STD

# CLIP-shaped sizes: name -> (width, depth, heads).
VIT_SIZES = {
    "Ti": (192, 12, 3),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "H": (1280, 32, 16),
}


class VisionTransformer(nn.Module):
  """images [B, H, W, C] float -> dict(embedding [B, E], tokens [B, N, D], grid, taps, maps)."""
  width: int
  depth: int
  heads: int
  patch_size: int
  embed_dim: int
  mlp_ratio: float = 4.0
  activation: str = "gelu"
  remat: str = "none"
  scan: bool = False
  stem: str = "patch"  # "patch" (CLIP layout) or "conv" (stride-2 3x3 convs: faster to train)
  pool: str = "cls"    # "cls" (CLIP layout) or "gap" (mean of patch tokens)
  projection: str = "linear"
  pyramid_levels: tuple[tuple[int, int], ...] = ()  # ((tap_layer, stride), ...); () = no pyramid
  pyramid_channels: int = 256
  pyramid_pool: str = "attention"
  pyramid_lateral: str = "none"  # "pixels": a hybrid FPN (rsjax/models/pyramid.py)
  pyramid_gate_init: float = 0.0
  # What the [-1, 1] input images are mapped to first: "none" keeps them; "clip" applies CLIP's
  # per-channel mean/std normalization (OpenAI's constants), which converted CLIP weights expect.
  input_norm: str = "none"
  # With input_norm "dataset": a data set's per-channel pixel mean / std on the 0..255 scale
  # (`rsjax data prepare` writes them to the prepared set's metadata.json).
  input_mean: tuple[float, ...] = ()
  input_std: tuple[float, ...] = ()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  peft: Settings = OFF  # LoRA / adapters in the encoder's blocks (not in the pyramid)

  def _embed_patches(self, images: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H/p, W/p, D]."""
    p = self.patch_size
    conv = functools.partial(nn.Conv, dtype=self.dtype, param_dtype=self.param_dtype)
    if self.stem == "patch":
      return conv(self.width, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                  kernel_init=logical(nn.initializers.lecun_normal(), (None, None, None, "embed")),
                  name="patch_embed")(images)
    if self.stem != "conv":
      raise ConfigError(f"config key 'model.image.stem': unknown stem '{self.stem}' (use 'patch' "
                        "or 'conv')")
    # Early convolutions (Xiao et al. 2021): log2(p) stride-2 3x3 convs, widths doubling up to D.
    # They make a small ViT train faster and keep detail from objects of a few pixels.
    n = int(math.log2(p))
    if 2 ** n != p:
      raise ConfigError(f"config key 'model.image.patch_size': the conv stem needs a power-of-two "
                        f"patch size, got {p}")
    x = images
    for i in range(n):
      channels = self.width // 2 ** (n - 1 - i)
      x = conv(channels, (3, 3), strides=(2, 2), padding="SAME", name=f"stem_conv{i}",
               kernel_init=logical(nn.initializers.lecun_normal(), (None, None, None, None)))(x)
      if i < n - 1:
        x = nn.gelu(x)
    return conv(self.width, (1, 1), name="stem_proj",
                kernel_init=logical(nn.initializers.lecun_normal(), (None, None, None, "embed")))(x)

  @nn.compact
  def __call__(self, images: jax.Array, regions: bool = False) -> dict:
    """`regions` adds what the heat maps need (rsjax/evaluation/heatmaps.py), from the same
    parameters: "patch_embeddings" [B, gh, gw, E], each patch token through ln_post and the
    projection of the pooled embedding, and with a pyramid "region_embeddings" {stride:
    [B, h, w, E]}."""
    if self.input_norm == "clip":
      images = (images.astype(jnp.float32) * 0.5 + 0.5 - CLIP_MEAN) / CLIP_STD
    elif self.input_norm == "dataset":
      if len(self.input_mean) != images.shape[-1] or len(self.input_std) != images.shape[-1]:
        raise ConfigError(f"config key 'model.image.input_mean': input_norm 'dataset' needs one "
                          f"model.image.input_mean / input_std value per channel "
                          f"({images.shape[-1]}), got {self.input_mean} / {self.input_std}")
      pixels = (images.astype(jnp.float32) + 1.0) * 127.5  # back to the 0..255 scale
      images = (pixels - jnp.asarray(self.input_mean)) / jnp.asarray(self.input_std)
    elif self.input_norm != "none":
      raise ConfigError(f"config key 'model.image.input_norm': unknown image input_norm "
                        f"'{self.input_norm}' (use 'none', 'clip' or 'dataset')")
    x = self._embed_patches(images.astype(self.dtype))
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
    taps = tuple(layer for layer, _ in self.pyramid_levels)
    x, tapped = Encoder(self.depth, self.heads, self.mlp_ratio, self.activation, self.remat,
                        self.scan, taps, **kw, peft=self.peft, name="encoder")(x)
    if self.pool == "cls":
      pooled = x[:, 0]
    elif self.pool == "gap":
      pooled = x[:, 1:].mean(1)
    else:
      raise ConfigError(f"config key 'model.image.pool': unknown image pooling '{self.pool}' (use "
                        "'cls' or 'gap')")
    ln_post = LayerNorm(**kw, name="ln_post")
    proj = ProjectionHead(self.embed_dim, self.projection, name="proj")
    embedding = proj(ln_post(pooled))
    out = {"embedding": embedding, "tokens": x[:, 1:], "grid": (gh, gw), "taps": tapped}
    if regions:  # the same two modules again: shared parameters, none added
      out["patch_embeddings"] = proj(ln_post(x[:, 1:])).reshape(batch, gh, gw, -1)
    if self.pyramid_levels:
      pyr = FeaturePyramid(self.pyramid_levels, self.patch_size, (gh, gw), self.pyramid_channels,
                           self.embed_dim, self.pyramid_pool, self.dtype, self.pyramid_lateral,
                           self.pyramid_gate_init, name="pyramid")(tapped, regions, images)
      out["embedding"] = embedding + pyr["embedding"].astype(embedding.dtype)
      out["maps"] = pyr["maps"]
      if regions:  # a level's region: the trunk's patch vector there plus the level's share
        out["region_embeddings"] = {
            stride: resample_grid(out["patch_embeddings"], self.patch_size, stride)
            + share.astype(embedding.dtype) for stride, share in pyr["contributions"].items()}
    return out


def resample_grid(x: jax.Array, source: int, target: int) -> jax.Array:
  """A map at stride `source` [B, h, w, E] -> stride `target`: each cell repeated (finer) or
  averaged over blocks (coarser), as the pyramid's levels are laid out."""
  if target < source:
    f = source // target
    return jnp.repeat(jnp.repeat(x, f, axis=1), f, axis=2)
  if target > source:
    f = target // source
    return nn.avg_pool(x, (f, f), strides=(f, f))
  return x


def interpolate_pos_embed(pos: np.ndarray, new_grid: tuple[int, int]) -> np.ndarray:
  """Resizes a ViT positional embedding [1 + h*w, D] to [1 + H*W, D] (bicubic, [CLS] row kept).

  Used when loading weights trained at another resolution or patch size.
  """
  cls, grid = pos[:1], pos[1:]
  side = int(round(math.sqrt(len(grid))))
  if side * side != len(grid):
    raise ValueError(f"positional embedding of {len(grid)} patches is not a square grid")
  if (side, side) == tuple(new_grid):
    return pos
  grid = grid.reshape(side, side, -1)
  resized = jax.image.resize(jnp.asarray(grid, jnp.float32), (*new_grid, grid.shape[-1]), "bicubic")
  return np.concatenate([cls, np.asarray(resized).reshape(-1, grid.shape[-1])], 0).astype(pos.dtype)
