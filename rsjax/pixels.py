"""Pixel conventions shared by the data side and the model side.

Images travel as uint8 [B, H, W, 3] from the loaders to the devices (four times less to copy than
float32) and become floats in [-1, 1] on the device. Models imported from CLIP then apply CLIP's
per-channel statistics (`model.image.input_norm="clip"`), which the CLIP-style preprocessing of
the data side uses too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# OpenAI CLIP's per-channel RGB statistics on [0, 1] pixels (also open_clip's OPENAI_DATASET_*).
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def normalize_images(images: jax.Array) -> jax.Array:
  """uint8 [B, H, W, 3] -> float in [-1, 1]; done on the device to keep host work small."""
  return images.astype(jnp.float32) * (2.0 / 255.0) - 1.0
