"""CLIP's evaluation preprocessing (OpenAI CLIP / open_clip), reproduced with Pillow.

open_clip's `image_transform(size, is_train=False)` with its defaults is: resize the shortest side to
`size` with Pillow's bicubic filter (the long side becomes int(size * long / short)), center-crop
`size` x `size` (offsets rounded as round((H - size) / 2)), convert to RGB, scale to [0, 1],
normalize with OpenAI's mean/std. Here the first three steps give uint8 pixels, so the result feeds
the rsjax pipeline unchanged (uint8 -> [-1, 1] on the device); a model with
`model.image.input_norm="clip"` then applies the mean/std (rsjax.pixels.CLIP_MEAN/CLIP_STD).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from rsjax.pixels import CLIP_MEAN, CLIP_STD


def resize_shortest_side(image: Image.Image, size: int) -> Image.Image:
  """Bicubic resize so that the shorter side is `size` pixels, keeping the aspect ratio."""
  width, height = image.size
  short, long = min(width, height), max(width, height)
  new_short, new_long = size, int(size * long / short)
  new = (new_short, new_long) if width <= height else (new_long, new_short)
  if new == (width, height):
    return image
  return image.resize(new, Image.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
  """The central `size` x `size` window (the image is at least that large after the resize)."""
  width, height = image.size
  if width < size or height < size:
    raise ValueError(f"image of {width}x{height} is smaller than the {size}x{size} crop")
  top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
  return image.crop((left, top, left + size, top + size))


def clip_pixels(image: Image.Image | str | os.PathLike, size: int = 224) -> np.ndarray:
  """A PIL image or image file -> uint8 [size, size, 3], exactly the pixels open_clip normalizes."""
  if not isinstance(image, Image.Image):
    with Image.open(image) as opened:
      opened.load()
      image = opened.copy()
  image = center_crop(resize_shortest_side(image, size), size)
  if image.mode != "RGB":  # open_clip converts after resizing and cropping; so do we
    image = image.convert("RGB")
  return np.asarray(image, np.uint8)


def clip_normalize(pixels: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] -> float32 normalized as open_clip feeds its model ([..., 3], channels last)."""
  return (pixels.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
