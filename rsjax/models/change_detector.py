"""The change / no-change head of a change encoder: date sequences -> one change logit per sequence.

Two kinds (`model.temporal.detector`):

- "pooled": a linear layer on the fusion's pooled change vector (the trunk's stride-16 tokens).
  A change of a few pixels (one small building) is averaged into a 16x16 patch and then into the
  mean over patches, and is easily lost under the nuisance differences every pair has.
- "pixels" (early fusion, as in the FC-EF change detectors): the first and last dates and their
  difference, stacked as channels at full resolution, through a few 3x3 convolutions; the change
  feature is the maximum over positions, so one changed spot decides. It shares no parameters
  with the trunk or the fusion: retrieval embeddings do not depend on it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from rsjax.errors import ConfigError
from rsjax.models.layers import logical

DETECTORS = ("pooled", "pixels")


class PixelChangeDetector(nn.Module):
  """Dates [B, T, H, W, 3] (normalised pixels) -> change logit [B] float32 (> 0: changed).

  widths: channels of the 3x3 convolutions (the first at stride 1, the rest at stride 2)."""
  widths: tuple[int, ...] = (24, 48, 64)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, dates: jax.Array) -> jax.Array:
    first, last = dates[:, 0].astype(self.dtype), dates[:, -1].astype(self.dtype)
    x = jnp.concatenate([first, last, last - first], -1)            # [B, H, W, 9]
    for i, width in enumerate(self.widths):
      x = nn.Conv(width, (3, 3), strides=(1, 1) if i == 0 else (2, 2), padding="SAME",
                  dtype=self.dtype, name=f"conv{i}",
                  kernel_init=logical(nn.initializers.lecun_normal(), (None, None, None, None)))(x)
      x = nn.gelu(x)
    feature = jnp.max(x, axis=(1, 2))                               # [B, C]: the most changed spot
    logit = nn.Dense(1, dtype=jnp.float32, name="out",
                     kernel_init=logical(nn.initializers.zeros, (None, None)))(feature)
    return logit[:, 0].astype(jnp.float32)


def check_detector(name: str) -> None:
  if name not in DETECTORS:
    raise ConfigError(f"config key 'model.temporal.detector': unknown {name!r}, choose from "
                      f"{DETECTORS}")
