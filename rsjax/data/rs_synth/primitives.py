"""Noise and anti-aliased coverage primitives that every RS-Synth painter builds on.

Shapes are drawn with analytic anti-aliased coverage so that objects of 2-4 px still show their
colour and rough shape. Images are float32 [S, S, 3] RGB in [0, 255] until finishing.
"""

from __future__ import annotations

import functools
import math

import numpy as np

Box = tuple[float, float, float, float]   # x0, y0, x1, y1 in pixels (floats)
# An object is a list of parts in its own frame (u along the heading, v across):
# (shape, du, dv, hu, hv, dangle) with shape "rect" or "ellipse" and half-sizes hu, hv.
Part = tuple[str, float, float, float, float, float]


def choice(rng: np.random.Generator, options, p=None):
  """One of `options` (weights p); much cheaper than Generator.choice for tiny lists."""
  if p is None:
    return options[int(rng.integers(len(options)))]
  r, acc = rng.random() * sum(p), 0.0
  for option, w in zip(options, p):
    acc += w
    if r < acc:
      return option
  return options[-1]


def grain(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
  """Zero-mean, unit-std pixel noise from random bytes (triangular; ~6x cheaper than normal)."""
  n = math.prod(shape)
  b = np.frombuffer(rng.bytes(2 * n), np.uint8).astype(np.float32)
  return ((b[:n] + b[n:] - 255.0) * (1 / 104.5)).reshape(shape)


@functools.lru_cache(maxsize=64)
def _interp_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
  """Bilinear upsampling n_in -> n_out nodes: left index i0 [n_out] and weight f [n_out]."""
  t = (np.arange(n_out) + 0.5) / n_out * (n_in - 1)
  i0 = np.minimum(np.floor(t).astype(np.int64), n_in - 2)
  return i0, (t - i0).astype(np.float32)


def noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
  """[size, size] smooth noise: a (cells+1)^2 Gaussian lattice upsampled bilinearly.

  Gathers rather than a matmul: BLAS threading made it slower and could change the bits.
  """
  cells = max(1, min(int(cells), size))
  i0, f = _interp_weights(cells + 1, size)
  low = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
  rows = low[i0] * (1 - f)[:, None] + low[i0 + 1] * f[:, None]   # [size, cells+1]
  return rows[:, i0] * (1 - f) + rows[:, i0 + 1] * f


@functools.lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates (yy, xx), each [size, size] float32; read-only."""
  c = np.arange(size, dtype=np.float32) + 0.5
  yy, xx = np.meshgrid(c, c, indexing="ij")
  yy.flags.writeable = False
  xx.flags.writeable = False
  return yy, xx


def unit(x: np.ndarray) -> np.ndarray:
  """Clamp a temporary array to [0, 1] in place (np.clip's Python overhead dominates here)."""
  return np.minimum(np.maximum(x, 0, out=x), 1, out=x)


def colorize(base, *layers) -> np.ndarray:
  """base [3] + sum of noise [H, W] * amplitude [3] -> [H, W, 3]."""
  img = np.asarray(base, np.float32)[None, None, :]
  for layer, amp in layers:
    img = img + layer[..., None] * np.asarray(amp, np.float32)
  return img


def blend(region: np.ndarray, cov: np.ndarray, color) -> None:
  """In place: region [h, w, 3] += (color - region) * cov [h, w] (color [3] or [h, w, 3])."""
  region += (np.asarray(color, np.float32) - region) * cov[..., None]


def box_coverage(size: int, box: Box) -> tuple[slice, slice, np.ndarray]:
  """Exact pixel coverage of an axis-aligned box, as (rows, cols, cov [h, w])."""
  x0, y0, x1, y1 = box
  c0, c1 = max(0, int(math.floor(x0))), min(size, int(math.ceil(x1)))
  r0, r1 = max(0, int(math.floor(y0))), min(size, int(math.ceil(y1)))
  xs = np.arange(c0, c1, dtype=np.float32)
  ys = np.arange(r0, r1, dtype=np.float32)
  cx = unit(np.minimum(xs + 1, x1) - np.maximum(xs, x0))
  cy = unit(np.minimum(ys + 1, y1) - np.maximum(ys, y0))
  return slice(r0, r1), slice(c0, c1), cy[:, None] * cx[None, :]


def fill_box(img: np.ndarray, box: Box, color, alpha: float = 1.0) -> None:
  rows, cols, cov = box_coverage(img.shape[0], box)
  if cov.size:
    blend(img[rows, cols], cov * alpha, color)


def _part_extent(part: Part, angle: float) -> tuple[float, float, float, float]:
  """Axis-aligned (dx, dy, ex, ey): part centre offset and half extents, in pixels."""
  _, du, dv, hu, hv, da = part
  c, s = math.cos(angle), math.sin(angle)
  ca, sa = abs(math.cos(angle + da)), abs(math.sin(angle + da))
  return du * c - dv * s, du * s + dv * c, hu * ca + hv * sa, hu * sa + hv * ca


def extent(parts: list[Part], angle: float) -> tuple[float, float]:
  """Half extents (hx, hy) of the union of parts about the object centre."""
  hx = hy = 0.0
  for p in parts:
    dx, dy, ex, ey = _part_extent(p, angle)
    hx, hy = max(hx, abs(dx) + ex), max(hy, abs(dy) + ey)
  return hx, hy


def stamp(img: np.ndarray, cx: float, cy: float, angle: float, parts: list[Part], color,
          alpha: float = 1.0, shadow: float = 0.0) -> None:
  """Draw the union of parts at (cx, cy): blend to color, or darken by `shadow` if > 0."""
  size = img.shape[0]
  hx, hy = extent(parts, angle)
  c0, c1 = max(0, int(cx - hx - 1)), min(size, int(math.ceil(cx + hx + 1)))
  r0, r1 = max(0, int(cy - hy - 1)), min(size, int(math.ceil(cy + hy + 1)))
  if c1 <= c0 or r1 <= r0:
    return
  x = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5 - cx
  y = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5 - cy
  cov = np.zeros((r1 - r0, c1 - c0), np.float32)
  for shape, du, dv, hu, hv, da in parts:
    c, s = math.cos(angle + da), math.sin(angle + da)
    ox = du * math.cos(angle) - dv * math.sin(angle)
    oy = du * math.sin(angle) + dv * math.cos(angle)
    u = (x - ox) * c + (y - oy) * s
    v = (y - oy) * c - (x - ox) * s
    if shape == "rect":
      part = unit(hu + 0.5 - np.abs(u)) * unit(hv + 0.5 - np.abs(v))
    else:  # ellipse: signed distance approximated through the normalized radius
      r = np.sqrt((u / hu) ** 2 + (v / hv) ** 2)
      part = unit(0.5 - (r - 1) * min(hu, hv))
    np.maximum(cov, part, out=cov)
  region = img[r0:r1, c0:c1]
  if shadow > 0:
    region *= (1 - shadow * cov)[..., None]
  else:
    blend(region, cov * alpha, color)
