"""The retrieval model: an image tower and a text tower meeting in one embedding space, assembled
from the `model` section of a config (which towers, which heads)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from rsjax.models import peft
from rsjax.models.heads import ContrastiveHead, HashingHead, l2_normalize, pack_codes
from rsjax.models.text import TextTransformer
from rsjax.models.vit import VisionTransformer
from rsjax.errors import ConfigError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _levels(pyramid: ml_collections.ConfigDict) -> tuple[tuple[int, int], ...]:
  if len(pyramid.taps) != len(pyramid.strides):
    raise ConfigError(f"config keys 'model.image.pyramid.taps' {tuple(pyramid.taps)} and "
                     f"'model.image.pyramid.strides' {tuple(pyramid.strides)} differ in length")
  return tuple((int(layer), int(stride))
               for layer, stride in zip(pyramid.taps, pyramid.strides, strict=True))


class TwoTower(nn.Module):
  """encode_image: [B, H, W, 3] -> [B, E] unit norm; encode_text: [B, L] -> [B, E] unit norm.

  `__call__` returns what the losses need: normalised embeddings, logit scale and bias, and, with a
  hashing head (model.hashing.bits > 0), relaxed codes tanh(beta * z) [B, K] of both modalities.
  """
  config: ml_collections.ConfigDict  # the `model` section of a run config
  # Towers computing in another dtype than model.dtype, e.g. (("image", "bfloat16"),) for a frozen
  # image tower under train.frozen_dtype (rsjax/state.py: create_model).
  tower_dtypes: tuple[tuple[str, str], ...] = ()

  def setup(self):
    c = self.config
    if c.dtype not in DTYPES:
      raise ConfigError(f"config key 'model.dtype': unknown dtype '{c.dtype}', choose from {sorted(DTYPES)}")
    kw = dict(dtype=DTYPES[c.dtype], param_dtype=jnp.float32, remat=c.remat, scan=c.scan,
              projection=c.projection, activation=c.activation)
    dtype_of = {tower: DTYPES[name] for tower, name in self.tower_dtypes}
    image_kw = {**kw, "dtype": dtype_of.get("image", kw["dtype"])}
    text_kw = {**kw, "dtype": dtype_of.get("text", kw["dtype"])}
    pyramid = c.image.pyramid
    self.image = VisionTransformer(
        width=c.image.width, depth=c.image.depth, heads=c.image.heads,
        patch_size=c.image.patch_size, embed_dim=c.embed_dim, mlp_ratio=c.image.mlp_ratio,
        stem=c.image.stem, pool=c.image.pool, input_norm=c.image.get("input_norm", "none"),
        input_mean=tuple(c.image.get("input_mean", ())), input_std=tuple(c.image.get("input_std", ())),
        pyramid_levels=_levels(pyramid) if pyramid.enabled else (),
        pyramid_channels=pyramid.channels, pyramid_pool=pyramid.pool,
        pyramid_lateral=pyramid.get("lateral", "none"),
        pyramid_gate_init=float(pyramid.get("gate_init", 0.0)),
        peft=peft.settings_for(c, "image"), **image_kw)
    self.text = TextTransformer(
        vocab_size=c.text.vocab_size, context_length=c.text.context_length, width=c.text.width,
        depth=c.text.depth, heads=c.text.heads, embed_dim=c.embed_dim, causal=c.text.causal,
        pool=c.text.pool, mlp_ratio=c.text.mlp_ratio, peft=peft.settings_for(c, "text"),
        **text_kw)
    self.head = ContrastiveHead(init_logit_scale=c.init_logit_scale,
                                init_logit_bias=c.init_logit_bias, use_bias=c.logit_bias)
    if c.hashing.bits:
      self.image_hash = HashingHead(c.hashing.bits)
      self.text_hash = HashingHead(c.hashing.bits)

  def image_embedding(self, images: jax.Array) -> jax.Array:
    """[B, H, W, 3] -> the pooled image embedding [B, E], not normalised (what both heads read)."""
    return self.image(images)["embedding"]

  def encode_image(self, images: jax.Array) -> jax.Array:
    return l2_normalize(self.image(images)["embedding"])

  def encode_text(self, ids: jax.Array) -> jax.Array:
    return l2_normalize(self.text(ids)["embedding"])

  def image_regions(self, images: jax.Array) -> dict:
    """[B, H, W, 3] -> {"embedding" [B, E], "patches" [B, gh, gw, E], and with a pyramid
    "regions" {stride: [B, h, w, E]}}, none normalised: the pooled embedding and the vectors of
    patches / pyramid regions in the same space (rsjax/evaluation/heatmaps.py)."""
    out = self.image(images, regions=True)
    return {"embedding": out["embedding"], "patches": out["patch_embeddings"],
            **({"regions": out["region_embeddings"]} if "region_embeddings" in out else {})}

  def text_tokens(self, ids: jax.Array) -> dict:
    """[B, L] -> {"embedding" [B, E], "tokens" [B, L, E]}, not normalised: the pooled embedding
    and each token position's vector in the same space."""
    out = self.text(ids, per_token=True)
    return {"embedding": out["embedding"], "tokens": out["token_embeddings"]}

  def hash_image(self, images: jax.Array) -> jax.Array:
    """Bit-packed image codes uint8 [B, K/8]."""
    return pack_codes(self.image_hash(self.image(images)["embedding"], train=False))

  def hash_text(self, ids: jax.Array) -> jax.Array:
    """Bit-packed text codes uint8 [B, K/8]."""
    return pack_codes(self.text_hash(self.text(ids)["embedding"], train=False))

  def __call__(self, images: jax.Array, ids: jax.Array, hash_beta: jax.Array | float = 1.0) -> dict:
    img = self.image(images)["embedding"]
    txt = self.text(ids)["embedding"]
    img_n, txt_n, scale, bias = self.head(img, txt)
    out = {"image": img_n, "text": txt_n, "logit_scale": scale, "logit_bias": bias}
    if self.config.hashing.bits:
      out["image_hash"] = self.image_hash(img, hash_beta)
      out["text_hash"] = self.text_hash(txt, hash_beta)
    return out
