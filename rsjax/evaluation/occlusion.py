"""Occlusion heat maps: how much a query's score falls when one window of the image is hidden.

The cosine maps of heatmaps.py compare a query with each patch token, but a ViT pools its tokens
through attention, and after training the patch tokens of a small model need not carry their own
position's content in the shared space (benchmarks/heatmap_localisation.py measures it: they do
not). Occlusion asks the pooled embedding itself, the one retrieval ranks by:

    map[y, x] = mean over windows w covering (y, x) of  s(image) - s(image with w hidden)
    s(.) = <embedding(.) / |.|, q / |q|>        q: the query's embedding, or a word's vector

Positive where hiding a window lowers the score (the window holds what matched), negative where it
raises it. A window is hidden by filling it with the image's per-channel median (its background,
for a tile of this field); a date sequence [T, H, W, 3] is different: the window is set to the
first date's pixels on every date, which removes any change there, so the map shows where the
change matched. Needs only the model's encode_image: any image or change encoder works, and a
converted CLIP loads unchanged. Cost: one encoder pass per window, shared by all queries and words
of an image ((H - window) / stride + 1)^2 passes, e.g. 64 px, window 8, stride 8: 64.
"""

from __future__ import annotations

import numpy as np


def window_starts(length: int, window: int, stride: int) -> list[int]:
  """Top (or left) edges of windows of `window` pixels every `stride`, the last flush with the
  edge, so that every pixel is covered."""
  if not 0 < window <= length or stride <= 0:
    raise ValueError(f"occlusion window {window} and stride {stride} must be positive and the "
                     f"window at most the image side {length}")
  starts = list(range(0, length - window + 1, stride))
  if starts[-1] != length - window:
    starts.append(length - window)
  return starts


def windows(height: int, width: int, window: int, stride: int) -> list[tuple[int, int]]:
  """(y0, x0) of every window, row by row."""
  return [(y, x) for y in window_starts(height, window, stride)
          for x in window_starts(width, window, stride)]


def hidden_copies(image: np.ndarray, corners: list[tuple[int, int]], window: int) -> np.ndarray:
  """uint8 [H, W, 3] (or a date sequence [T, H, W, 3]) -> [K, ...] copies, window k hidden in the
  k-th (see the module docstring for what fills it)."""
  image = np.asarray(image)
  copies = np.repeat(image[None], len(corners), 0)
  if image.ndim == 4:                                   # dates: undo the change in the window
    fill = np.broadcast_to(image[:1], image.shape)
  else:
    fill = np.broadcast_to(np.median(image.reshape(-1, image.shape[-1]), 0).astype(image.dtype),
                           image.shape)
  for k, (y, x) in enumerate(corners):
    copies[k, ..., y: y + window, x: x + window, :] = fill[..., y: y + window, x: x + window, :]
  return copies


def paint(drops: np.ndarray, corners: list[tuple[int, int]], window: int,
          size: tuple[int, int]) -> np.ndarray:
  """Score drops [Q, K] of K windows -> maps [Q, H, W] float32: each pixel the mean drop of the
  windows that cover it."""
  total = np.zeros((drops.shape[0], *size), np.float64)
  count = np.zeros(size, np.float64)
  for k, (y, x) in enumerate(corners):
    total[:, y: y + window, x: x + window] += drops[:, k, None, None]
    count[y: y + window, x: x + window] += 1
  return (total / count).astype(np.float32)


def occlusion_maps(encode, image: np.ndarray, queries: np.ndarray, window: int,
                   stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """One uint8 image [H, W, 3] or date sequence [T, H, W, 3] and query vectors [Q, E] ->
  (maps [Q, H, W] float32, the unoccluded scores [Q]).

  encode: uint8 images [N, ...] (the image's own shape after N) -> embeddings [N, E]."""
  image = np.asarray(image)
  size = image.shape[-3:-1]
  corners = windows(*size, window, stride or window)
  embeddings = _unit(encode(np.concatenate([image[None], hidden_copies(image, corners, window)])))
  scores = embeddings @ _unit(queries).T                         # [1 + K, Q]
  return paint((scores[:1] - scores[1:]).T, corners, window, size), scores[0].astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
