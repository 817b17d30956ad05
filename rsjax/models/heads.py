"""Heads on top of the tower embeddings.

- `ProjectionHead`: linear or MLP projection into the shared space.
- `ContrastiveHead`: L2 normalisation, learnable logit scale (clamped) and optional bias.
- `HashingHead`: K-bit codes; tanh(beta * z) in training, sign(z) at inference, bit-packed for search.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from rsjax.errors import ConfigError
from rsjax.losses import binary_codes as binarize  # one definition of the codes: sign(0) = +1
from rsjax.losses import relax_codes
from rsjax.models.layers import logical

HASH_BITS = (16, 32, 64, 128, 256)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """[..., E] -> unit-norm rows, computed in float32."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), eps * eps))


class ProjectionHead(nn.Module):
  """[B, D] -> [B, E]: one linear map, or an MLP with one hidden layer of width `hidden`."""
  embed_dim: int
  kind: str = "linear"
  hidden: int = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = logical(nn.initializers.lecun_normal(), ("embed", None))
    if self.kind == "linear":
      return nn.Dense(self.embed_dim, use_bias=False, kernel_init=init, name="proj")(x)
    if self.kind == "mlp":
      hidden = self.hidden or x.shape[-1]
      x = nn.gelu(nn.Dense(hidden, kernel_init=init, name="fc1")(x))
      return nn.Dense(self.embed_dim, use_bias=False,
                      kernel_init=logical(nn.initializers.lecun_normal(), (None, None)),
                      name="fc2")(x)
    raise ConfigError(f"config key 'model.projection': unknown projection '{self.kind}' (use "
                      "'linear' or 'mlp')")


class ContrastiveHead(nn.Module):
  """Normalises both embeddings and holds the learnable temperature (and bias, for SigLIP).

  Returns (img [B, E], txt [B, E], logit_scale scalar, logit_bias scalar). The scale is exp of a
  parameter clamped at `max_logit_scale` (CLIP clamps at 100) so training cannot blow it up. Without
  `use_bias` the bias is the constant 0 and no parameter exists (CLIP's parameter count).
  """
  init_logit_scale: float = math.log(1 / 0.07)
  init_logit_bias: float = 0.0
  use_bias: bool = False
  max_logit_scale: float = math.log(100.0)

  @nn.compact
  def __call__(self, image_embedding: jax.Array, text_embedding: jax.Array):
    log_scale = self.param("logit_scale", nn.initializers.constant(self.init_logit_scale), ())
    scale = jnp.exp(jnp.minimum(log_scale, self.max_logit_scale))
    bias = (self.param("logit_bias", nn.initializers.constant(self.init_logit_bias), ())
            if self.use_bias else jnp.zeros(()))
    return l2_normalize(image_embedding), l2_normalize(text_embedding), scale, bias


class HashingHead(nn.Module):
  """[B, D] -> relaxed codes tanh(beta * z) [B, K] (training) or exact codes sign(z) in {-1, +1}.

  beta grows during training (see `hash_beta`) so the relaxation approaches sign(); sign(0) is +1.
  """
  bits: int

  @nn.compact
  def __call__(self, x: jax.Array, beta: jax.Array | float = 1.0, train: bool = True):
    if self.bits not in HASH_BITS:
      raise ConfigError(f"config key 'model.hashing.bits': hash bits must be one of {HASH_BITS} "
                        f"(or 0: no hashing head), got {self.bits}")
    z = nn.Dense(self.bits, kernel_init=logical(nn.initializers.lecun_normal(), ("embed", None)),
                 name="hash")(x.astype(jnp.float32))
    return relax_codes(z, beta) if train else binarize(z)


def hash_beta(step: jax.Array, total_steps: int, start: float = 1.0, end: float = 10.0) -> jax.Array:
  """Relaxation sharpness: linear from `start` to `end` over training."""
  frac = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
  return start + (end - start) * frac


def pack_codes(codes: jax.Array) -> jax.Array:
  """{-1, +1} codes [B, K] -> uint8 [B, K/8], most significant bit first (np.packbits order).

  Viewed as little-endian uint64 on the host, K/64 words per code feed popcount search.
  """
  batch, bits = codes.shape
  if bits % 8:
    raise ValueError(f"code length {bits} is not a multiple of 8")
  on = (codes > 0).reshape(batch, bits // 8, 8).astype(jnp.uint8)
  weights = (1 << jnp.arange(7, -1, -1)).astype(jnp.uint8)
  return jnp.sum(on * weights, axis=-1, dtype=jnp.uint8)


def unpack_codes(packed: jax.Array, bits: int) -> jax.Array:
  """Inverse of pack_codes: uint8 [B, K/8] -> {-1, +1} float32 [B, K]."""
  shifts = jnp.arange(7, -1, -1, dtype=jnp.uint8)
  on = (packed[..., None] >> shifts) & 1
  return jnp.where(on.reshape(packed.shape[0], -1)[:, :bits] > 0, 1.0, -1.0)
