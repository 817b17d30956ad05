"""RS-Synth: an embedded, procedurally generated remote-sensing image-caption data set.

Top-down scenes (uint8 RGB, square `image_size`) of one land cover (water, forest, farmland, bare
soil, urban, grassland), optional road / river, and 1-2 object groups (plane, ship, car, storage
tank, building) of a given count, size and 3x3-grid position, each with the context that makes it
look aerial (ships on water, planes on a runway, cars on a road or a parking lot). Five captions
per image come from `captions_grammar`.

Everything is a pure function of (spec.seed, split, index), so any subset renders identically and
generation parallelizes trivially. `load_or_generate` caches the splits on disk.

v2 keeps the v1 train/val/test splits byte for byte (their cache key stays "v1-<hash>") and adds
three labelled challenge subsets (`ChallengeSpec`, `generate_challenge`,
`load_or_generate_challenges`, cached under "v2-challenges-<hash>"), each example on its own
random streams:
  multiscale     v1 scenes, captions labelled "scene" (land cover, roads/rivers, kinds of
                 objects) or "object" (one group's count, size and place);
  small_objects  original/distractor pairs that differ only in one group of objects spanning at
                 most SMALL_MAX_PX pixels (all or some removed); captions state each image's count;
  temporal       before/after pairs: buildings added or removed in a grid cell, a road built
                 across a third of the tile, or no change; both dates get their own illumination
                 and sensor noise. Change captions, labels "changed" / "change" / "region_box".
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing
import multiprocessing.pool
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rsjax.data import captions_grammar as grammar

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class SynthSpec:
  """Identity of a generated data set; all fields are part of the cache key."""
  version: str = "v1"
  seed: int = 0
  image_size: int = 64
  num_train: int = 10000
  num_val: int = 500
  num_test: int = 1000

  def __post_init__(self):
    if self.image_size < 16:
      raise ValueError(f"image_size must be >= 16 (3x3 grid of objects), got {self.image_size}")
    if min(self.num_train, self.num_val, self.num_test) < 0:
      raise ValueError(f"split sizes must be >= 0: {self}")

  def num_examples(self, split: str) -> int:
    return {"train": self.num_train, "val": self.num_val, "test": self.num_test}[split]


# --------------------------------------------------------------------------------------------
# Scene parameters. Colours are float RGB in [0, 255].

LANDCOVERS = grammar.LANDCOVERS
CLASSES = grammar.CLASSES
SIZE_FRACTIONS = {"small": (0.03, 0.06), "medium": (0.09, 0.14), "large": (0.20, 0.30)}
SIZE_PROBS = (0.4, 0.35, 0.25)      # small objects are the point of the benchmark
ROAD_PROB = 0.4
RIVER_PROB = 0.3                    # of non-water images
CAR_COLORS = {"red": (200, 38, 32), "blue": (40, 75, 195), "yellow": (232, 200, 45),
              "white": (238, 238, 232)}
ROOF_COLORS = {"red": (168, 66, 50), "grey": (138, 140, 146)}
ASPHALT = np.array([112, 112, 110], np.float32)
RUNWAY = np.array([66, 67, 70], np.float32)
CONCRETE = np.array([158, 154, 144], np.float32)
PARKING = np.array([146, 146, 143], np.float32)
Box = tuple[float, float, float, float]   # x0, y0, x1, y1 in pixels (floats)


# --------------------------------------------------------------------------------------------
# Noise and coverage primitives. Shapes are drawn with analytic anti-aliased coverage so that
# objects of 2-4 px still show their colour and rough shape.

def _choice(rng: np.random.Generator, options, p=None):
  """One of `options` (weights p); much cheaper than Generator.choice for tiny lists."""
  if p is None:
    return options[int(rng.integers(len(options)))]
  r, acc = rng.random() * sum(p), 0.0
  for option, w in zip(options, p):
    acc += w
    if r < acc:
      return option
  return options[-1]


def _grain(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
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


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
  """[size, size] smooth noise: a (cells+1)^2 Gaussian lattice upsampled bilinearly.

  Gathers rather than a matmul: BLAS threading made it slower and could change the bits.
  """
  cells = max(1, min(int(cells), size))
  i0, f = _interp_weights(cells + 1, size)
  low = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
  rows = low[i0] * (1 - f)[:, None] + low[i0 + 1] * f[:, None]   # [size, cells+1]
  return rows[:, i0] * (1 - f) + rows[:, i0 + 1] * f


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates (yy, xx), each [size, size] float32; read-only."""
  c = np.arange(size, dtype=np.float32) + 0.5
  yy, xx = np.meshgrid(c, c, indexing="ij")
  yy.flags.writeable = False
  xx.flags.writeable = False
  return yy, xx


def _unit(x: np.ndarray) -> np.ndarray:
  """Clamp a temporary array to [0, 1] in place (np.clip's Python overhead dominates here)."""
  return np.minimum(np.maximum(x, 0, out=x), 1, out=x)


def _colorize(base, *layers) -> np.ndarray:
  """base [3] + sum of noise [H, W] * amplitude [3] -> [H, W, 3]."""
  img = np.asarray(base, np.float32)[None, None, :]
  for noise, amp in layers:
    img = img + noise[..., None] * np.asarray(amp, np.float32)
  return img


def _blend(region: np.ndarray, cov: np.ndarray, color) -> None:
  """In place: region [h, w, 3] += (color - region) * cov [h, w] (color [3] or [h, w, 3])."""
  region += (np.asarray(color, np.float32) - region) * cov[..., None]


def _box_coverage(size: int, box: Box) -> tuple[slice, slice, np.ndarray]:
  """Exact pixel coverage of an axis-aligned box, as (rows, cols, cov [h, w])."""
  x0, y0, x1, y1 = box
  c0, c1 = max(0, int(math.floor(x0))), min(size, int(math.ceil(x1)))
  r0, r1 = max(0, int(math.floor(y0))), min(size, int(math.ceil(y1)))
  xs = np.arange(c0, c1, dtype=np.float32)
  ys = np.arange(r0, r1, dtype=np.float32)
  cx = _unit(np.minimum(xs + 1, x1) - np.maximum(xs, x0))
  cy = _unit(np.minimum(ys + 1, y1) - np.maximum(ys, y0))
  return slice(r0, r1), slice(c0, c1), cy[:, None] * cx[None, :]


def _fill_box(img: np.ndarray, box: Box, color, alpha: float = 1.0) -> None:
  rows, cols, cov = _box_coverage(img.shape[0], box)
  if cov.size:
    _blend(img[rows, cols], cov * alpha, color)


# An object is a list of parts in its own frame (u along the heading, v across):
# (shape, du, dv, hu, hv, dangle) with shape "rect" or "ellipse" and half-sizes hu, hv.
Part = tuple[str, float, float, float, float, float]


def _part_extent(part: Part, angle: float) -> tuple[float, float, float, float]:
  """Axis-aligned (dx, dy, ex, ey): part centre offset and half extents, in pixels."""
  _, du, dv, hu, hv, da = part
  c, s = math.cos(angle), math.sin(angle)
  ca, sa = abs(math.cos(angle + da)), abs(math.sin(angle + da))
  return du * c - dv * s, du * s + dv * c, hu * ca + hv * sa, hu * sa + hv * ca


def _extent(parts: list[Part], angle: float) -> tuple[float, float]:
  """Half extents (hx, hy) of the union of parts about the object centre."""
  hx = hy = 0.0
  for p in parts:
    dx, dy, ex, ey = _part_extent(p, angle)
    hx, hy = max(hx, abs(dx) + ex), max(hy, abs(dy) + ey)
  return hx, hy


def _stamp(img: np.ndarray, cx: float, cy: float, angle: float, parts: list[Part], color,
           alpha: float = 1.0, shadow: float = 0.0) -> None:
  """Draw the union of parts at (cx, cy): blend to color, or darken by `shadow` if > 0."""
  size = img.shape[0]
  hx, hy = _extent(parts, angle)
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
      part = _unit(hu + 0.5 - np.abs(u)) * _unit(hv + 0.5 - np.abs(v))
    else:  # ellipse: signed distance approximated through the normalized radius
      r = np.sqrt((u / hu) ** 2 + (v / hv) ** 2)
      part = _unit(0.5 - (r - 1) * min(hu, hv))
    np.maximum(cov, part, out=cov)
  region = img[r0:r1, c0:c1]
  if shadow > 0:
    region *= (1 - shadow * cov)[..., None]
  else:
    _blend(region, cov * alpha, color)


# --------------------------------------------------------------------------------------------
# Land cover backgrounds: each returns [S, S, 3] float32.

def _bg_water(rng: np.random.Generator, size: int) -> np.ndarray:
  """Dark blue with faint directional ripples."""
  yy, xx = _grid(size)
  a, period = rng.uniform(0, np.pi), size * rng.uniform(0.04, 0.08)
  phase = (xx * math.cos(a) + yy * math.sin(a)) * (2 * np.pi / period)
  ripple = np.sin(phase + 2.5 * _noise(rng, size, 4))
  base = np.array([24, 50, 86]) + rng.uniform(-6, 6, 3) + np.array([0, 1, 1]) * rng.uniform(-6, 10)
  return _colorize(base, (_noise(rng, size, 3), (3, 6, 9)), (_noise(rng, size, 8), (1.5, 3, 4)),
                   (ripple, (2, 3, 4.5)))


def _bg_forest(rng: np.random.Generator, size: int) -> np.ndarray:
  """Dark green blotches with tree-crown granularity."""
  crowns = _noise(rng, size, max(4, size // 3))
  base = np.array([32, 68, 36]) + rng.uniform(-5, 5, 3)
  img = _colorize(base, (_noise(rng, size, 4), (7, 12, 6)), (_noise(rng, size, size // 8), (4, 7, 4)),
                  (crowns, (6, 10, 5)))
  return img * (1 - 0.25 * _unit(-crowns - 0.6))[..., None]  # gaps between crowns


def _bg_farmland(rng: np.random.Generator, size: int) -> np.ndarray:
  """Patchwork of parallel field strips in greens and yellow-browns, with crop rows."""
  yy, xx = _grid(size)
  a = _choice(rng, (0.0, np.pi / 2)) + rng.uniform(-0.3, 0.3)
  u = xx * math.cos(a) + yy * math.sin(a)
  v = yy * math.cos(a) - xx * math.sin(a)
  w1, w2 = size * rng.uniform(0.09, 0.2), size * rng.uniform(0.3, 0.7)
  fu = (u + size) / w1 + rng.uniform(0, 1)
  fv = (v + size) / w2 + rng.uniform(0, 1)
  iu, iv = fu.astype(np.int64), fv.astype(np.int64)
  palette = np.array([[74, 116, 48], [96, 136, 56], [126, 152, 70], [184, 166, 96],
                      [152, 120, 78], [166, 142, 92], [110, 128, 60]], np.float32)
  table = palette[rng.integers(len(palette), size=(iu.max() + 1, iv.max() + 1))]
  table += rng.uniform(-10, 10, table.shape).astype(np.float32)
  img = table[iu, iv]
  rows = np.sin(v * (2 * np.pi / max(1.6, size * 0.04)))   # rows run along the strips
  img = img * (1 + 0.05 * rows)[..., None] + _noise(rng, size, size // 6)[..., None] * 5
  hedge = _unit(1.2 - (fu - iu) * w1) * 0.22       # darker field borders
  return img * (1 - hedge)[..., None]


def _bg_bare_soil(rng: np.random.Generator, size: int) -> np.ndarray:
  """Tan/brown mottled noise with darker patches and grit."""
  base = np.array([172, 142, 104]) + rng.uniform(-10, 10, 3)
  patches = _noise(rng, size, 5)
  img = _colorize(base, (_noise(rng, size, 3), (14, 12, 10)), (patches, (10, 9, 7)),
                  (_noise(rng, size, size // 4), (7, 6, 5)),
                  (_grain(rng, (size, size)), (5, 5, 4)))
  return img * (1 - 0.15 * _unit(patches - 0.7))[..., None]


def _bg_urban(rng: np.random.Generator, size: int) -> np.ndarray:
  """Grey grid of city blocks separated by darker streets, some blocks green (parks)."""
  yy, xx = _grid(size)
  block = size * rng.uniform(0.17, 0.27)
  street = max(1.2, size * rng.uniform(0.025, 0.04))
  bx = (xx + rng.uniform(0, block)) / block
  by = (yy + rng.uniform(0, block)) / block
  ix, iy = bx.astype(np.int64), by.astype(np.int64)
  fx, fy = (bx - ix) * block, (by - iy) * block
  n = int(ix.max()) + 1, int(iy.max()) + 1
  table = rng.uniform(118, 172, n)[..., None] + rng.uniform(-6, 6, n + (3,))
  parks = rng.random(n) < 0.1
  table[parks] = np.array([92, 122, 74]) + rng.uniform(-8, 8, (int(parks.sum()), 3))
  img = table[ix, iy].astype(np.float32)
  # lots inside a block: alternate roof tones split at random fractions of the block
  lot = ((fx > block * 0.5) ^ (fy > block * rng.uniform(0.35, 0.65)))
  img = img * (1 + 0.06 * np.where(lot, 1, -1))[..., None] + _noise(rng, size, size // 4)[..., None] * 6
  edge = _unit(street + 0.5 - np.minimum(fx, fy))   # anti-aliased street mask
  _blend(img, edge, np.array([82, 82, 85], np.float32))
  return img


def _bg_grassland(rng: np.random.Generator, size: int) -> np.ndarray:
  """Light green noise with yellowish dry patches."""
  base = np.array([116, 160, 76]) + rng.uniform(-8, 8, 3)
  dry = np.clip(_noise(rng, size, 4), 0, None)
  return _colorize(base, (_noise(rng, size, 3), (8, 10, 5)), (_noise(rng, size, size // 5), (5, 7, 4)),
                   (dry, (18, 8, 4)), (_grain(rng, (size, size)), (3, 4, 2)))


BACKGROUNDS = {"water": _bg_water, "forest": _bg_forest, "farmland": _bg_farmland,
               "bare soil": _bg_bare_soil, "urban": _bg_urban, "grassland": _bg_grassland}


# --------------------------------------------------------------------------------------------
# Linear features across the whole image.

def _draw_river(img: np.ndarray, rng: np.random.Generator,
                water: Callable[[], np.ndarray]) -> np.ndarray:
  """Meandering blue band with sandy banks; returns its water coverage [S, S]."""
  size = img.shape[0]
  yy, xx = _grid(size)
  a = rng.uniform(0, np.pi)
  u = (xx - size / 2) * math.cos(a) + (yy - size / 2) * math.sin(a)
  v = (yy - size / 2) * math.cos(a) - (xx - size / 2) * math.sin(a)
  centre = (size * rng.uniform(-0.3, 0.3) + size * rng.uniform(0.03, 0.1)
            * np.sin(u * (2 * np.pi / (size * rng.uniform(0.6, 1.4))) + rng.uniform(0, 2 * np.pi)))
  d = np.abs(v - centre)
  half = size * rng.uniform(0.035, 0.06)
  _blend(img, _unit(half + 1.5 - d) * 0.6, np.array([176, 160, 120], np.float32))
  cov = _unit(half + 0.5 - d)
  _blend(img, cov, water())
  return cov


def _draw_road(img: np.ndarray, rng: np.random.Generator) -> None:
  """Straight grey road through a random point at a random angle, with a faint centre line."""
  size = img.shape[0]
  yy, xx = _grid(size)
  a = rng.uniform(0, np.pi)
  px, py = rng.uniform(0.2, 0.8, 2) * size
  d = np.abs((yy - py) * math.cos(a) - (xx - px) * math.sin(a))
  half = max(1.0, size * rng.uniform(0.02, 0.032))
  _blend(img, _unit(half + 0.5 - d), ASPHALT + rng.uniform(-8, 8))
  if half >= 1.5:
    _blend(img, _unit(0.7 - d) * 0.5, np.array([215, 215, 200], np.float32))


# --------------------------------------------------------------------------------------------
# Objects: part lists in the object frame, sized by their pixel length L.

def _plane_parts(length: float) -> list[Part]:
  """Fuselage, wings and tail plane: a cross seen from above (wings swept once resolvable)."""
  body = ("ellipse", 0.0, 0.0, length / 2, max(0.35, 0.07 * length), 0.0)
  tail = ("rect", -0.42 * length, 0.0, max(0.3, 0.05 * length), 0.18 * length, 0.0)
  if length < 8:
    return [body, ("rect", -0.02 * length, 0.0, max(0.45, 0.09 * length), 0.47 * length, 0.0), tail]
  chord, span = max(0.5, 0.08 * length), 0.26 * length
  return [body, ("rect", -0.08 * length, 0.22 * length, chord, span, 0.35),
          ("rect", -0.08 * length, -0.22 * length, chord, span, -0.35), tail]


def _ship_parts(length: float) -> list[Part]:
  return [("ellipse", 0.0, 0.0, length / 2, max(0.4, 0.13 * length), 0.0)]


def _car_parts(length: float) -> list[Part]:
  return [("rect", 0.0, 0.0, length / 2, max(0.35, 0.24 * length), 0.0)]


def _tank_parts(length: float) -> list[Part]:
  return [("ellipse", 0.0, 0.0, length / 2, length / 2, 0.0)]


def _building_parts(length: float, width_ratio: float) -> list[Part]:
  return [("rect", 0.0, 0.0, length / 2, max(0.5, width_ratio * length / 2), 0.0)]


def _shadow_offset(length: float, sun: tuple[float, float], k: float) -> tuple[float, float]:
  d = max(0.5, k * length)
  return sun[0] * d, sun[1] * d


def _draw_object(img: np.ndarray, obj: dict, sun: tuple[float, float]) -> None:
  """Draw one placed object {cls, L, cx, cy, angle, color, ...} with its shadow/details."""
  cls, length, cx, cy, a = obj["cls"], obj["L"], obj["cx"], obj["cy"], obj["angle"]
  parts = obj["parts"]
  if cls == "ship":
    if obj.get("wake"):
      wake = [("ellipse", -0.95 * length, 0.0, 0.75 * length, max(0.5, 0.2 * length), 0.0)]
      _stamp(img, cx, cy, a, wake, (120, 150, 170), alpha=0.35)
    _stamp(img, cx, cy, a, parts, obj["color"])
    if length >= 7:  # superstructure
      deck = [("rect", -0.18 * length, 0.0, 0.12 * length, 0.07 * length, 0.0)]
      _stamp(img, cx, cy, a, deck, (150, 150, 150))
    return
  k = {"plane": 0.12, "car": 0.12, "storage tank": 0.2, "building": 0.2}[cls]
  sx, sy = _shadow_offset(length, sun, k)
  _stamp(img, cx + sx, cy + sy, a, parts, None, shadow=0.65)
  detailed_tank = cls == "storage tank" and length >= 5
  _stamp(img, cx, cy, a, parts, obj["color"] * (0.86 if detailed_tank else 1.0))
  if detailed_tank:
    # A grey rim around a bright lid reads as a cylinder; the offset shadow is the dark edge.
    _stamp(img, cx, cy, a, _tank_parts(length * 0.8), obj["color"] * 1.02)
    _stamp(img, cx, cy, a, _tank_parts(max(1.0, length * 0.12)), (170, 170, 168))
  elif cls == "building" and length >= 6:
    half_roof = [("rect", 0.0, -obj["parts"][0][4] / 2, length / 2, obj["parts"][0][4] / 2, 0.0)]
    _stamp(img, cx, cy, a, half_roof, np.asarray(obj["color"]) * 1.15, alpha=0.6)
  elif cls == "car" and length >= 6:
    glass = [("rect", 0.15 * length, 0.0, 0.07 * length, 0.19 * length, 0.0)]
    _stamp(img, cx, cy, a, glass, (40, 45, 55), alpha=0.8)


# --------------------------------------------------------------------------------------------
# Groups: context under the group, placement inside the cell, objects.

def _cell(position: str, size: int) -> Box:
  r, c = divmod(grammar.POSITIONS.index(position), 3)
  s = size / 3
  return c * s, r * s, (c + 1) * s, (r + 1) * s


def _sample_group(rng: np.random.Generator, cls: str, position: str, landcover: str,
                  size: str | None = None) -> dict:
  """Group parameters; `size` forces a size class (v1 draws it: the draw order is fixed)."""
  size = size or _choice(rng, grammar.SIZES, SIZE_PROBS)
  count = 1 if size == "large" else int(rng.integers(1, 5))  # one large object fills a cell
  if cls == "ship":
    context = "water" if landcover == "water" else _choice(rng, ("pond", "harbor"))
  elif cls == "plane":  # beside: the runway takes part of the cell, so only small planes
    context = "runway_beside" if size == "small" and rng.random() < 0.5 else "runway_on"
  elif cls == "car":
    context = _choice(rng, ("road", "parking"))
  else:
    context = "none"
  color = None
  if cls == "car" and rng.random() < 0.6:
    color = _choice(rng, tuple(CAR_COLORS))
  elif cls == "building":
    color = _choice(rng, tuple(ROOF_COLORS))
  return {"cls": cls, "count": count, "size": size, "position": position, "context": context,
          "color": color}


def _object_length(rng: np.random.Generator, size_name: str, image_size: int) -> int:
  lo, hi = SIZE_FRACTIONS[size_name]
  return max(2, int(round(rng.uniform(lo, hi) * image_size)))


def _band_box(cell: Box, axis: int, lo: float, hi: float, extend: float, size: int) -> Box:
  """Box spanning the cell along `axis` (0: horizontal band) +- extend, between lo..hi across."""
  x0, y0, x1, y1 = cell
  if axis == 0:
    return max(0, x0 - extend), lo, min(size, x1 + extend), hi
  return lo, max(0, y0 - extend), hi, min(size, y1 + extend)


def _inset(box: Box, d: float) -> Box:
  return box[0] + d, box[1] + d, box[2] - d, box[3] - d


def _ctx_band(img, rng, cell, group, lengths, water, extend, axis) -> tuple[Box, int]:
  """Runway or road: a band across the cell (wide enough for 1-2 lanes of objects)."""
  size, side, ctx = img.shape[0], cell[2] - cell[0], group["context"]
  lanes = 2 if group["count"] > 2 else 1
  across = 0.5 if ctx == "road" else 0.95      # object extent across the band per length
  need = lanes * (across * max(lengths) + 1.5) + 1
  width = min(side - 1, max(side * (0.45 if ctx == "road" else 0.6), need))
  lo = cell[1 - axis] + rng.uniform(0, side - width)
  color = (RUNWAY if ctx == "runway_on" else ASPHALT) + rng.uniform(-6, 6)
  _fill_box(img, _band_box(cell, axis, lo, lo + width, extend, size), color)
  mid = lo + width / 2
  _fill_box(img, _band_box(cell, axis, mid - 0.2, mid + 0.2, extend, size), (225, 225, 215), 0.45)
  return _inset(_band_box(cell, axis, lo, lo + width, 0.0, size), 0.5), axis


def _ctx_runway_beside(img, rng, cell, group, lengths, water, extend, axis) -> tuple[Box, int]:
  """Runway along one side of the cell; planes on the rest, noses towards it."""
  size, side = img.shape[0], cell[2] - cell[0]
  width, start = side * 0.28, cell[1 - axis]
  first = rng.random() < 0.5
  lo = start if first else start + side - width
  _fill_box(img, _band_box(cell, axis, lo, lo + width, extend, size), RUNWAY + rng.uniform(-6, 6))
  rest = (start + width + 1, start + side) if first else (start, start + side - width - 1)
  return _inset(_band_box(cell, axis, rest[0], rest[1], 0.0, size), 0.5), 1 - axis


def _ctx_parking(img, rng, cell, group, lengths, water, extend, axis) -> tuple[Box, int]:
  """Light grey lot with stall lines; cars parked across the lines."""
  size = img.shape[0]
  lot = _inset(cell, (cell[2] - cell[0]) * 0.04)
  _fill_box(img, lot, PARKING + rng.uniform(-8, 8))
  step = max(lengths) * 0.55 + 1
  if step >= 3:  # stall lines only where they resolve
    for t in np.arange(lot[1 - axis] + step, lot[3 - axis], step):
      _fill_box(img, _band_box(lot, axis, t - 0.2, t + 0.2, 0, size), (230, 230, 225), 0.5)
  return _inset(lot, 0.5), 1 - axis


def _ctx_harbor(img, rng, cell, group, lengths, water, extend, axis) -> tuple[Box, int]:
  """Rectangular basin in a concrete quay frame."""
  q = max(1.0, (cell[2] - cell[0]) * 0.07)
  _fill_box(img, _inset(cell, -q), CONCRETE + rng.uniform(-8, 8, 3))
  rows, cols, cov = _box_coverage(img.shape[0], cell)
  _blend(img[rows, cols], cov, water()[rows, cols])
  return _inset(cell, 0.5), axis


def _ctx_pond(img, rng, cell, group, lengths, water, extend, axis) -> tuple[Box, int]:
  """Rounded, slightly irregular water body (superellipse, p = 4) covering the cell."""
  size = img.shape[0]
  yy, xx = _grid(size)
  cx, cy = (cell[0] + cell[2]) / 2, (cell[1] + cell[3]) / 2
  a = (cell[2] - cell[0]) * rng.uniform(0.6, 0.66)
  wobble = 0.05 * _noise(rng, size, 6)
  rows, cols, _ = _box_coverage(size, (cx - 1.2 * a, cy - 1.2 * a, cx + 1.2 * a, cy + 1.2 * a))
  dx, dy = (xx[rows, cols] - cx) / a, (yy[rows, cols] - cy) / a
  r = np.sqrt(np.sqrt(dx ** 4 + dy ** 4)) + wobble[rows, cols]
  region = img[rows, cols]
  _blend(region, _unit((1.08 - r) * a + 0.5) * 0.7, np.array([96, 90, 60], np.float32))  # bank
  _blend(region, _unit((1 - r) * a + 0.5), water()[rows, cols])
  return _inset(cell, 0.5), axis


def _ctx_none(img, rng, cell, group, lengths, water, extend, axis) -> tuple[Box, int]:
  return _inset(cell, 0.5), axis


CONTEXTS = {"runway_on": _ctx_band, "road": _ctx_band, "runway_beside": _ctx_runway_beside,
            "parking": _ctx_parking, "harbor": _ctx_harbor, "pond": _ctx_pond,
            "water": _ctx_none, "none": _ctx_none}


def _draw_context(img: np.ndarray, rng: np.random.Generator, group: dict, lengths: list[int],
                  water: Callable[[], np.ndarray], on_water: bool) -> tuple[Box, int]:
  """Paint what the group stands on; return (placement box, axis objects align to: 0 = x)."""
  cell = _cell(group["position"], img.shape[0])
  side = cell[2] - cell[0]
  axis = int(rng.integers(2))
  if on_water and group["cls"] != "ship":  # an island/pier so land objects are not afloat
    _fill_box(img, _inset(cell, -side * 0.05), CONCRETE + rng.uniform(-10, 10, 3))
  extend = 0.0 if on_water else side * 0.5   # runways/roads run on beyond the cell on land
  return CONTEXTS[group["context"]](img, rng, cell, group, lengths, water, extend, axis)


def _fit(parts_fn, length: int, angle: float, box: Box) -> tuple[int, list[Part], float, float]:
  """Shrink an object (length >= 2) until it fits in `box`; returns (L, parts, hx, hy)."""
  bw, bh = box[2] - box[0], box[3] - box[1]
  while True:
    parts = parts_fn(length)
    hx, hy = _extent(parts, angle)
    if (2 * hx <= bw and 2 * hy <= bh) or length <= 2:
      return length, parts, hx, hy
    length -= 1


def _slots(box: Box, n: int, rng: np.random.Generator) -> list[Box]:
  """Split a box into n disjoint slots (1, 1x2 / 2x1, or 2x2 minus one)."""
  x0, y0, x1, y1 = box
  mx, my = (x0 + x1) / 2, (y0 + y1) / 2
  if n == 1:
    return [box]
  if n == 2:
    if rng.random() < 0.5:
      return [(x0, y0, mx, y1), (mx, y0, x1, y1)]
    return [(x0, y0, x1, my), (x0, my, x1, y1)]
  quads = [(x0, y0, mx, my), (mx, y0, x1, my), (x0, my, mx, y1), (mx, my, x1, y1)]
  keep = sorted(rng.permutation(4)[:n])
  return [quads[i] for i in keep]


def _place(rng: np.random.Generator, box: Box, extents: list[tuple[float, float]],
           gap: float = 1.0) -> list[tuple[float, float]] | None:
  """Random non-overlapping centres for the given half extents inside box, or None."""
  placed: list[tuple[float, float, float, float]] = []
  for hx, hy in extents:
    lo_x, hi_x = box[0] + hx, box[2] - hx
    lo_y, hi_y = box[1] + hy, box[3] - hy
    if lo_x > hi_x or lo_y > hi_y:
      return None
    for _ in range(30):
      cx, cy = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
      if all(abs(cx - px) >= hx + phx + gap or abs(cy - py) >= hy + phy + gap
             for px, py, phx, phy in placed):
        placed.append((cx, cy, hx, hy))
        break
    else:
      return None
  return [(p[0], p[1]) for p in placed]


def _parts_fn(obj: dict):
  cls = obj["cls"]
  if cls == "building":
    return functools.partial(_building_parts, width_ratio=obj["width_ratio"])
  return {"plane": _plane_parts, "ship": _ship_parts, "car": _car_parts,
          "storage tank": _tank_parts}[cls]


def _object_angle(rng: np.random.Generator, group: dict, axis: int, base: float) -> float:
  """Heading: along roads/runways, parked in rows, free on open water."""
  ctx, cls = group["context"], group["cls"]
  aligned = axis * np.pi / 2 + _choice(rng, (0.0, np.pi))
  if cls == "storage tank":
    return 0.0
  if cls == "building":
    return base + rng.uniform(-0.05, 0.05)
  if ctx in ("road", "runway_on", "parking", "runway_beside", "harbor"):
    return float(aligned + rng.uniform(-0.08, 0.08))
  return float(rng.uniform(0, 2 * np.pi))


def _layout_group(rng: np.random.Generator, group: dict, lengths: list[int], box: Box, axis: int,
                  landcover: str) -> list[dict]:
  """Objects of a group with centres inside box, not overlapping each other."""
  base = 0.0 if landcover == "urban" or rng.random() < 0.5 else rng.uniform(-0.5, 0.5)
  objs = []
  for length in sorted(lengths, reverse=True):  # big ones first: easier packing
    obj = {"cls": group["cls"], "L": length, "angle": _object_angle(rng, group, axis, base),
           "width_ratio": rng.uniform(0.5, 0.9), "wake": group["context"] == "water" and rng.random() < 0.5}
    if group["cls"] == "car":
      color = group["color"] or _choice(rng, tuple(CAR_COLORS))
      obj["color"] = np.array(CAR_COLORS[color], np.float32) + rng.uniform(-8, 8, 3)
    elif group["cls"] == "building":
      obj["color"] = np.array(ROOF_COLORS[group["color"]], np.float32) + rng.uniform(-8, 8, 3)
    elif group["cls"] == "plane":
      obj["color"] = np.array([208, 210, 214], np.float32) + rng.uniform(-8, 8)
    else:
      obj["color"] = np.array([232, 232, 226], np.float32) + rng.uniform(-6, 6)
    objs.append(obj)
  for o in objs:
    o["L"], o["parts"], o["hx"], o["hy"] = _fit(_parts_fn(o), o["L"], o["angle"], box)
  centres = _place(rng, box, [(o["hx"], o["hy"]) for o in objs])
  if centres is None:  # crowded: one slot each, snapping headings to the grid, shrinking if needed
    centres = []
    for o, slot in zip(objs, _slots(box, len(objs), rng)):
      o["angle"] = round(o["angle"] / (np.pi / 2)) * (np.pi / 2)
      o["L"], o["parts"], o["hx"], o["hy"] = _fit(_parts_fn(o), o["L"], o["angle"], slot)
      centres += _place(rng, slot, [(o["hx"], o["hy"])], gap=0.0) or [
          ((slot[0] + slot[2]) / 2, (slot[1] + slot[3]) / 2)]
  for o, (cx, cy) in zip(objs, centres):
    o["cx"], o["cy"] = float(cx), float(cy)
  return objs


# --------------------------------------------------------------------------------------------
# One example.

def _lazy_water(rng: np.random.Generator, size: int) -> Callable[[], np.ndarray]:
  """Water texture [S, S, 3] made on first call: most images never need one."""
  made: list[np.ndarray] = []

  def get() -> np.ndarray:
    if not made:
      made.append(_bg_water(rng, size))
    return made[0]
  return get


def _finish(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Brightness/colour jitter and sensor noise, then quantize to uint8."""
  size = img.shape[0]
  gain = rng.uniform(0.9, 1.1) * rng.uniform(0.96, 1.04, 3).astype(np.float32)
  img = img * gain + 2.5 * _grain(rng, (size, size, 3))
  return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _water_source(img: np.ndarray, landcover: str, seed: list[int]) -> Callable[[], np.ndarray]:
  """The water texture for rivers/ponds/harbours: the background itself on water, else made on
  demand from its own stream (`seed`), so images that need none do not pay for it."""
  if landcover == "water":
    water_img = img.copy()
    return lambda: water_img
  return _lazy_water(np.random.default_rng(seed), img.shape[0])


def _scene(rng: np.random.Generator, water_seed: list[int], size: int) -> tuple[np.ndarray, dict]:
  """A v1 scene before captions and finishing: float image [S, S, 3] and {"landcover", "groups",
  "road", "river"}. The order of random draws here defines RS-Synth v1's bytes: do not reorder."""
  landcover = _choice(rng, LANDCOVERS)
  img = BACKGROUNDS[landcover](rng, size)
  water = _water_source(img, landcover, water_seed)
  road = bool(rng.random() < ROAD_PROB)
  river_cov = None
  if landcover != "water" and rng.random() < RIVER_PROB:
    river_cov = _draw_river(img, rng, water)
  if road:
    _draw_road(img, rng)

  n_groups = 1 if rng.random() < 0.5 else 2
  classes = rng.permutation(len(CLASSES))[:n_groups]
  positions = rng.permutation(len(grammar.POSITIONS))[:n_groups]
  groups = [_sample_group(rng, CLASSES[c], grammar.POSITIONS[p], landcover)
            for c, p in zip(classes, positions)]
  lengths = [[_object_length(rng, g["size"], size) for _ in range(g["count"])] for g in groups]
  placements = [_draw_context(img, rng, g, ls, water, _on_water(g, landcover, river_cov, size))
                for g, ls in zip(groups, lengths)]
  sun = (math.cos(a := rng.uniform(0, 2 * np.pi)), math.sin(a))
  for g, ls, (box, axis) in zip(groups, lengths, placements):
    objs = _layout_group(rng, g, ls, box, axis, landcover)
    for o in objs:
      _draw_object(img, o, sun)
    _describe_objects(g, objs)
  return img, {"landcover": landcover, "groups": groups, "road": road,
               "river": river_cov is not None}


def _on_river(position: str, river_cov: np.ndarray, size: int) -> bool:
  rows, cols, _ = _box_coverage(size, _cell(position, size))
  return bool(river_cov[rows, cols].max() > 0)


def _on_water(group: dict, landcover: str, river_cov: np.ndarray | None, size: int) -> bool:
  """Whether the group's cell is water (then land objects get a pad, see _draw_context)."""
  if river_cov is not None and group["context"] == "none":  # keep tanks/buildings off the river
    return _on_river(group["position"], river_cov, size)
  return landcover == "water"


def _boxes(objs: list[dict]) -> list[list[int]]:
  """Object boxes [x0, y0, x1, y1] rounded outwards to whole pixels."""
  return [[int(math.floor(o["cx"] - o["hx"])), int(math.floor(o["cy"] - o["hy"])),
           int(math.ceil(o["cx"] + o["hx"])), int(math.ceil(o["cy"] + o["hy"]))] for o in objs]


def _describe_objects(group: dict, objs: list[dict]) -> None:
  """Record what was drawn: object lengths and boxes."""
  group["pixel_sizes"] = [int(o["L"]) for o in objs]
  group["boxes"] = _boxes(objs)


def render_example(spec: SynthSpec, split: str, index: int) -> tuple[np.ndarray, dict]:
  """One image [H, W, 3] uint8 and its record.

  Record: {"captions": [5 str], "landcover", "groups": [{"cls", "count", "size", "position",
  "context", "color", "pixel_sizes": [count int], "boxes": [[x0, y0, x1, y1] int]}], "road",
  "river", "split", "index"}. Deterministic: rng = default_rng([seed, split_id, index]).
  """
  sid = SPLITS.index(split)
  rng = np.random.default_rng([spec.seed, sid, index])
  img, scene = _scene(rng, [spec.seed, sid, index, 1], int(spec.image_size))
  captions = grammar.make_captions(scene["landcover"], scene["groups"], rng, road=scene["road"],
                                   river=scene["river"])
  record = {"captions": captions, **scene, "split": split, "index": int(index)}
  return _finish(img, rng), record


# --------------------------------------------------------------------------------------------
# Splits, multiprocessing and the on-disk cache.

def _render_range(args: tuple[SynthSpec, str, int, int]) -> tuple[np.ndarray, list[dict]]:
  spec, split, start, stop = args
  out = np.empty((stop - start, spec.image_size, spec.image_size, 3), np.uint8)
  records = []
  for i in range(start, stop):
    out[i - start], rec = render_example(spec, split, i)
    records.append(rec)
  return out, records


def _make_pool(workers: int) -> multiprocessing.pool.Pool:
  """A worker pool. fork is cheapest, but forking a process that already runs JAX's threads can
  deadlock, so then workers come from a fork server that has this module preloaded."""
  if "fork" in multiprocessing.get_all_start_methods() and "jax" not in sys.modules:
    return multiprocessing.get_context("fork").Pool(workers)
  if "forkserver" in multiprocessing.get_all_start_methods():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", __name__])
    return ctx.Pool(workers)
  return multiprocessing.get_context("spawn").Pool(workers)


def _num_workers(num_workers: int | None) -> int:
  return (os.cpu_count() or 1) if num_workers is None else max(1, int(num_workers))


def _map_chunks(fn, jobs: list, workers: int, pool: multiprocessing.pool.Pool | None):
  """fn over jobs, in order: in `pool`, in-process for 1 worker / 1 job, else in a new pool."""
  if pool is not None:
    return list(pool.imap(fn, jobs))
  if workers == 1 or len(jobs) <= 1:
    return list(map(fn, jobs))
  with _make_pool(min(workers, len(jobs))) as own:
    return list(own.imap(fn, jobs))


def _chunk_bounds(n: int, workers: int) -> list[tuple[int, int]]:
  chunk = max(16, math.ceil(n / (workers * 8)))   # ~8 chunks per worker balances the load
  return [(s, min(n, s + chunk)) for s in range(0, n, chunk)]


def generate_split(spec: SynthSpec, split: str, num_workers: int | None = None, *,
                   pool: multiprocessing.pool.Pool | None = None) -> tuple[np.ndarray, list[dict]]:
  """All images of a split [N, H, W, 3] uint8 plus their N records, in index order.

  Renders in a process pool of num_workers (default os.cpu_count()) processes, or in `pool` if
  given (load_or_generate shares one across splits); 1 worker renders in-process.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}, expected one of {SPLITS}")
  n = spec.num_examples(split)
  workers = _num_workers(num_workers)
  jobs = [(spec, split, s, e) for s, e in _chunk_bounds(n, workers)]
  images = np.empty((n, spec.image_size, spec.image_size, 3), np.uint8)
  records: list[dict] = []
  for (_, _, s, e), (imgs, recs) in zip(jobs, _map_chunks(_render_range, jobs, workers, pool)):
    images[s:e] = imgs
    records.extend(recs)
  return images, records


def spec_hash(spec: SynthSpec) -> str:
  blob = json.dumps(dataclasses.asdict(spec), sort_keys=True).encode()
  return hashlib.sha256(blob).hexdigest()[:12]


def cache_path(spec: SynthSpec, cache_dir: str | os.PathLike | None = None) -> Path:
  """<cache_dir or $RSJAX_CACHE or ~/.cache/rsjax>/rs_synth/<version>-<hash of spec>."""
  return _cache_root(cache_dir) / f"{spec.version}-{spec_hash(spec)}"


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
  root = Path(cache_dir or os.environ.get("RSJAX_CACHE") or Path.home() / ".cache" / "rsjax")
  return root.expanduser() / "rs_synth"


@contextlib.contextmanager
def _staging_dir(path: Path):
  """A temporary directory beside `path`, renamed to `path` when the block completes.

  A killed generation never leaves a half cache behind; a concurrent writer simply loses the race.
  """
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
  try:
    yield tmp
    if path.exists():  # stale or incomplete (callers read complete ones first): replace it
      shutil.rmtree(path, ignore_errors=True)
    try:
      os.replace(tmp, path)
    except OSError:  # another process finished first; its cache is equivalent
      pass
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _read_cache(path: Path, spec: SynthSpec) -> dict[str, tuple[np.ndarray, list[dict]]] | None:
  """The cached splits, or None if the directory is missing, foreign or incomplete."""
  try:
    if json.loads((path / "spec.json").read_text()) != dataclasses.asdict(spec):
      return None
    out = {}
    for split in SPLITS:
      images = np.load(path / f"images_{split}.npy", mmap_mode=None)
      with open(path / f"captions_{split}.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
      if len(images) != spec.num_examples(split) or len(records) != len(images):
        return None
      out[split] = (images, records)
    return out
  except (OSError, ValueError):
    return None


def _write_split(tmp: Path, split: str, images: np.ndarray, records: list[dict]) -> None:
  np.save(tmp / f"images_{split}.npy", images)
  with open(tmp / f"captions_{split}.jsonl", "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, separators=(",", ":")) + "\n")


def load_or_generate(spec: SynthSpec, cache_dir: str | os.PathLike | None = None,
                     progress: bool = True) -> dict[str, tuple[np.ndarray, list[dict]]]:
  """{split: (images [N, H, W, 3] uint8, records)} from the cache, generating it if needed.

  The cache directory is written under a temporary name and renamed into place (_staging_dir).
  """
  path = cache_path(spec, cache_dir)
  cached = _read_cache(path, spec)
  if cached is not None:
    if progress:
      sizes = ", ".join(f"{s} {len(cached[s][1])}" for s in SPLITS)
      print(f"rs_synth: loaded {sizes} from {path}", file=sys.stderr)
    return cached
  workers = _num_workers(None)
  pool = _make_pool(workers) if workers > 1 else None   # one pool for all splits
  try:
    with _staging_dir(path) as tmp:
      out = {}
      for split in SPLITS:
        t0 = time.perf_counter()
        images, records = generate_split(spec, split, pool=pool)
        _write_split(tmp, split, images, records)
        out[split] = (images, records)
        if progress:
          print(f"rs_synth: generated {split}: {len(images)} images at {spec.image_size}px "
                f"in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
      (tmp / "spec.json").write_text(json.dumps(dataclasses.asdict(spec), indent=1))
  finally:
    if pool is not None:
      pool.terminate()
  if progress:
    print(f"rs_synth: cached at {path}", file=sys.stderr)
  return out


# --------------------------------------------------------------------------------------------
# RS-Synth v2: three labelled challenge subsets beside the unchanged v1 splits. Each example is a
# pure function of (spec.seed, subset, index) on its own random streams (ids 10-12, apart from
# v1's split ids 0-2), so generating them never changes a v1 byte.

CHALLENGES = ("multiscale", "small_objects", "temporal")
_STREAMS = {"multiscale": 10, "small_objects": 11, "temporal": 12}
SMALL_MAX_PX = 8                      # the small-objects subset's objects span at most this
TEMPORAL_LANDCOVERS = tuple(lc for lc in LANDCOVERS if lc != "water")   # buildings need land
CHANGE_PROBS = (0.25, 0.25, 0.25, 0.25)   # over grammar.CHANGE_TYPES; "none" is the first


@dataclasses.dataclass(frozen=True)
class ChallengeSpec:
  """Identity of the v2 challenge subsets; all fields are part of their cache key.

  num_examples: images (multiscale), original/distractor pairs (small_objects, 2 images each) or
  before/after pairs (temporal) per subset.
  """
  version: str = "v2"
  seed: int = 0
  image_size: int = 64
  num_examples: int = 500

  def __post_init__(self):
    if self.image_size < 16:
      raise ValueError(f"image_size must be >= 16 (3x3 grid of objects), got {self.image_size}")
    if self.num_examples < 0:
      raise ValueError(f"num_examples must be >= 0: {self}")


def _streams(spec: ChallengeSpec, subset: str, index: int) -> tuple[np.random.Generator, list[int]]:
  """The example's main generator and the seed prefix of its side streams (water, finishing)."""
  seed = [spec.seed, _STREAMS[subset], int(index)]
  return np.random.default_rng(seed), seed


def render_multiscale(spec: ChallengeSpec, index: int) -> tuple[np.ndarray, dict]:
  """One v1-style image [H, W, 3] uint8 with two scene-level and two object-level captions.

  Record: v1's scene fields ("landcover", "groups", "road", "river") plus "captions" [4],
  "levels" [4] ("scene" | "object"), "caption_groups" [4] (index into groups; -1 for scene
  level), "subset", "index".
  """
  rng, seed = _streams(spec, "multiscale", index)
  img, scene = _scene(rng, seed + [1], int(spec.image_size))
  args = scene["groups"], scene["landcover"]
  scene_caps = grammar.scene_level_captions(*args, rng, road=scene["road"], river=scene["river"])
  object_caps = grammar.object_level_captions(*args, rng)
  record = {"subset": "multiscale", "index": int(index),
            "captions": scene_caps + [c for c, _ in object_caps],
            "levels": ["scene"] * len(scene_caps) + ["object"] * len(object_caps),
            "caption_groups": [-1] * len(scene_caps) + [g for _, g in object_caps], **scene}
  return _finish(img, rng), record


def _distinct(make: Callable[[], str], n: int) -> list[str]:
  """n different captions from `make` (redrawing the wording on a collision)."""
  out: list[str] = []
  for _ in range(n):
    text = make()
    for _ in range(20):
      if text not in out:
        break
      text = make()
    out.append(text)
  return out


def render_small_objects(spec: ChallengeSpec, index: int) -> tuple[np.ndarray, list[dict]]:
  """An (original, distractor) pair [2, H, W, 3] uint8 that differ only in one small group.

  The small group's objects span at most SMALL_MAX_PX pixels; the distractor lost all of them
  ("removed") or some ("fewer"). Everything else, sensor noise included, is identical, so each
  image's two captions (the group's count, class, place) are true of it and false of its partner.
  Records (one per image): "subset", "index" (image index 2 * pair + role), "pair", "role"
  ("original" | "distractor"), "distractor" (the pair's kind), "captions" [2], "landcover",
  "road", "river", "groups" (group 0 is the small one, described as drawn in this image, with
  "extents" [count] of its objects in pixels), "hidden_boxes" (boxes of the small objects this
  image lacks and its partner has; [] for the original).
  """
  size = int(spec.image_size)
  rng, seed = _streams(spec, "small_objects", index)
  landcover = _choice(rng, LANDCOVERS)
  img = BACKGROUNDS[landcover](rng, size)
  water = _water_source(img, landcover, seed + [1])
  road = bool(rng.random() < ROAD_PROB)
  river_cov = None
  if landcover != "water" and rng.random() < RIVER_PROB:
    river_cov = _draw_river(img, rng, water)
  if road:
    _draw_road(img, rng)
  n_groups = 1 if rng.random() < 0.5 else 2   # the second group is bigger and in both images
  classes = rng.permutation(len(CLASSES))[:n_groups]
  positions = rng.permutation(len(grammar.POSITIONS))[:n_groups]
  sizes = ["small", _choice(rng, ("medium", "large"))]
  groups = [_sample_group(rng, CLASSES[c], grammar.POSITIONS[p], landcover, size=z)
            for c, p, z in zip(classes, positions, sizes)]
  lengths = [[min(SMALL_MAX_PX, _object_length(rng, g["size"], size)) if g["size"] == "small"
              else _object_length(rng, g["size"], size) for _ in range(g["count"])] for g in groups]
  placements = [_draw_context(img, rng, g, ls, water, _on_water(g, landcover, river_cov, size))
                for g, ls in zip(groups, lengths)]
  sun = (math.cos(a := rng.uniform(0, 2 * np.pi)), math.sin(a))
  layouts = [_layout_group(rng, g, ls, box, axis, landcover)
             for g, ls, (box, axis) in zip(groups, lengths, placements)]
  small = layouts[0]
  for o in small:   # cap the footprint, not only the length (a rotated plane is wider than long)
    o["L"], o["parts"], o["hx"], o["hy"] = _fit(_parts_fn(o), o["L"], o["angle"],
                                                (0, 0, SMALL_MAX_PX, SMALL_MAX_PX))
    o["wake"] = False    # a wake would trail well beyond the object
  count = len(small)
  kind = "fewer" if count >= 2 and rng.random() < 0.5 else "removed"
  kept = sorted(rng.permutation(count)[:int(rng.integers(1, count))]) if kind == "fewer" else []
  for objs in layouts[1:]:
    for o in objs:
      _draw_object(img, o, sun)

  images, records = [], []
  for role, visible in (("original", list(range(count))), ("distractor", kept)):
    canvas = img.copy()
    for i in visible:
      _draw_object(canvas, small[i], sun)
    drawn = [dict(g) for g in groups]
    drawn[0]["count"] = len(visible)
    _describe_objects(drawn[0], [small[i] for i in visible])
    drawn[0]["extents"] = [round(2 * max(small[i]["hx"], small[i]["hy"]), 3) for i in visible]
    for g, objs in zip(drawn[1:], layouts[1:]):
      _describe_objects(g, objs)
    if visible:
      captions = [grammar.detail_caption(drawn[0], landcover, rng),
                  grammar.count_caption(drawn[0], landcover, rng)]
    else:
      captions = _distinct(lambda: grammar.absent_caption(drawn[0], landcover, rng), 2)
    hidden = [small[i] for i in range(count) if i not in visible]
    # The same finishing stream for both: identical illumination and sensor noise.
    images.append(_finish(canvas, np.random.default_rng(seed + [2])))
    records.append({"subset": "small_objects", "index": 2 * int(index) + len(records),
                    "pair": int(index), "role": role, "distractor": kind, "captions": captions,
                    "landcover": landcover, "road": road, "river": river_cov is not None,
                    "groups": drawn, "hidden_boxes": _boxes(hidden)})
  return np.stack(images), records


def _road_band(img: np.ndarray, rng: np.random.Generator, orientation: str, band: int) -> Box:
  """A straight, slightly tilted road inside one third of the image (band 0-2 from the top or the
  left); returns that third as a box."""
  size = img.shape[0]
  yy, xx = _grid(size)
  third = size / 3
  half = max(1.0, size * rng.uniform(0.02, 0.032))
  tilt = rng.uniform(-0.04, 0.04)
  margin = half + 2 + abs(tilt) * size / 2     # the whole anti-aliased edge stays in the band
  centre = rng.uniform(band * third + margin, (band + 1) * third - margin)
  along, across = (xx, yy) if orientation == "horizontal" else (yy, xx)
  d = np.abs((across - centre) * math.cos(tilt) - (along - size / 2) * math.sin(tilt))
  _blend(img, _unit(half + 0.5 - d), ASPHALT + rng.uniform(-8, 8))
  if half >= 1.5:
    _blend(img, _unit(0.7 - d) * 0.5, np.array([215, 215, 200], np.float32))
  lo, hi = band * third, (band + 1) * third
  return (0.0, lo, float(size), hi) if orientation == "horizontal" else (lo, 0.0, hi, float(size))


def render_temporal(spec: ChallengeSpec, index: int) -> tuple[np.ndarray, np.ndarray, dict]:
  """A before/after pair, each [H, W, 3] uint8, and its record.

  The change ("buildings_added" | "buildings_removed" | "road_built") lies inside "region_box"
  [x0, y0, x1, y1] (a grid cell, or a third of the image for a road; building shadows may reach a
  few pixels past it); "none" pairs differ only in nuisance: each date has its own illumination
  (gain) and sensor noise, as every pair does. Record: "subset", "index", "changed", "change",
  "region" (grid position named in the captions, or None), "region_box", "captions" [3],
  "landcover", "river", "road" ({"orientation", "position"} for a built road, else None),
  "buildings" (the changed group with its drawn "pixel_sizes" / "boxes", or None), "groups"
  (an optional unchanged group, present on both dates).
  """
  size = int(spec.image_size)
  rng, seed = _streams(spec, "temporal", index)
  landcover = _choice(rng, TEMPORAL_LANDCOVERS)
  img = BACKGROUNDS[landcover](rng, size)
  water = _water_source(img, landcover, seed + [1])
  river_cov = _draw_river(img, rng, water) if rng.random() < RIVER_PROB else None
  change = _choice(rng, grammar.CHANGE_TYPES, CHANGE_PROBS)

  region, region_cells, road, buildings = None, (), None, None
  if change == "road_built":
    orientation = _choice(rng, ("horizontal", "vertical"))
    band = int(rng.integers(3))
    region_cells = tuple(band * 3 + k if orientation == "horizontal" else k * 3 + band
                         for k in range(3))
    region = grammar.POSITIONS[region_cells[1]]
    road = {"orientation": orientation, "position": region}
  elif change != "none":
    dry = [p for p in grammar.POSITIONS if river_cov is None or not _on_river(p, river_cov, size)]
    region = _choice(rng, tuple(dry or grammar.POSITIONS))
    region_cells = (grammar.POSITIONS.index(region),)
  # An unchanged group elsewhere, so that objects alone do not signal a change.
  groups = []
  if rng.random() < 0.7:
    free = [p for i, p in enumerate(grammar.POSITIONS) if i not in region_cells]
    groups.append(_sample_group(rng, _choice(rng, CLASSES), _choice(rng, tuple(free)), landcover))
  lengths = [[_object_length(rng, g["size"], size) for _ in range(g["count"])] for g in groups]
  placements = [_draw_context(img, rng, g, ls, water, _on_water(g, landcover, river_cov, size))
                for g, ls in zip(groups, lengths)]
  sun = (math.cos(a := rng.uniform(0, 2 * np.pi)), math.sin(a))
  layouts = [_layout_group(rng, g, ls, box, axis, landcover)
             for g, ls, (box, axis) in zip(groups, lengths, placements)]

  before, after = img, img.copy()
  if road is not None:
    region_box = _road_band(after, rng, road["orientation"], region_cells[0] // 3
                            if road["orientation"] == "horizontal" else region_cells[0] % 3)
  elif change != "none":
    buildings = _sample_group(rng, "building", region, landcover)
    b_lengths = [_object_length(rng, buildings["size"], size) for _ in range(buildings["count"])]
    region_box = _cell(region, size)
    b_objs = _layout_group(rng, buildings, b_lengths, _inset(region_box, 0.5), int(rng.integers(2)),
                           landcover)
    for o in b_objs:
      _draw_object(after if change == "buildings_added" else before, o, sun)
    _describe_objects(buildings, b_objs)
  else:
    region_box = None
  for g, objs in zip(groups, layouts):   # on top of everything, on both dates
    for o in objs:
      _draw_object(before, o, sun)
      _draw_object(after, o, sun)
    _describe_objects(g, objs)

  captions = grammar.change_captions(change, landcover, rng, group=buildings, road=road)
  record = {"subset": "temporal", "index": int(index), "changed": change != "none",
            "change": change, "region": region,
            "region_box": None if region_box is None else [round(float(v), 3) for v in region_box],
            "captions": captions, "landcover": landcover, "river": river_cov is not None,
            "road": road, "buildings": buildings, "groups": groups}
  return (_finish(before, np.random.default_rng(seed + [2])),
          _finish(after, np.random.default_rng(seed + [3])), record)


def _render_challenge_range(args: tuple[ChallengeSpec, str, int, int]
                            ) -> tuple[dict[str, np.ndarray], list[dict]]:
  """Examples start..stop of a subset as stacked arrays + records (see generate_challenge)."""
  spec, subset, start, stop = args
  arrays: dict[str, list[np.ndarray]] = {}
  records: list[dict] = []
  for i in range(start, stop):
    if subset == "multiscale":
      img, rec = render_multiscale(spec, i)
      parts, recs = {"images": img[None]}, [rec]
    elif subset == "small_objects":
      pair, recs = render_small_objects(spec, i)
      parts = {"images": pair}
    else:
      before, after, rec = render_temporal(spec, i)
      parts, recs = {"before": before[None], "after": after[None]}, [rec]
    for k, v in parts.items():
      arrays.setdefault(k, []).append(v)
    records.extend(recs)
  return {k: np.concatenate(v) for k, v in arrays.items()}, records


def _challenge_arrays(subset: str) -> tuple[str, ...]:
  return ("before", "after") if subset == "temporal" else ("images",)


def generate_challenge(spec: ChallengeSpec, subset: str, num_workers: int | None = None, *,
                       pool: multiprocessing.pool.Pool | None = None
                       ) -> tuple[dict[str, np.ndarray], list[dict]]:
  """One challenge subset as ({name: uint8 array}, records), in index order.

  multiscale: {"images": [N, H, W, 3]}, N records (4 captions each, labelled by level);
  small_objects: {"images": [2N, H, W, 3]} (original 2i, distractor 2i + 1), 2N records;
  temporal: {"before": [N, H, W, 3], "after": [N, H, W, 3]}, N records (3 change captions each).
  """
  if subset not in CHALLENGES:
    raise ValueError(f"unknown RS-Synth challenge subset {subset!r}, expected one of {CHALLENGES}")
  n, s = spec.num_examples, spec.image_size
  workers = _num_workers(num_workers)
  jobs = [(spec, subset, a, b) for a, b in _chunk_bounds(n, workers)]
  per = 2 if subset == "small_objects" else 1
  arrays = {k: np.empty((per * n, s, s, 3), np.uint8) for k in _challenge_arrays(subset)}
  records: list[dict] = []
  for (_, _, a, b), (parts, recs) in zip(jobs, _map_chunks(_render_challenge_range, jobs,
                                                            workers, pool)):
    for k, v in parts.items():
      arrays[k][per * a:per * b] = v
    records.extend(recs)
  return arrays, records


def challenge_cache_path(spec: ChallengeSpec, cache_dir: str | os.PathLike | None = None) -> Path:
  """<cache root>/rs_synth/<version>-challenges-<hash of spec>, apart from the v1 split caches."""
  return _cache_root(cache_dir) / f"{spec.version}-challenges-{spec_hash(spec)}"


def _read_challenges(path: Path, spec: ChallengeSpec):
  """The cached subsets, or None if the directory is missing, foreign or incomplete."""
  try:
    if json.loads((path / "spec.json").read_text()) != dataclasses.asdict(spec):
      return None
    out = {}
    for subset in CHALLENGES:
      per = 2 if subset == "small_objects" else 1
      arrays = {k: np.load(path / f"{subset}_{k}.npy") for k in _challenge_arrays(subset)}
      with open(path / f"{subset}.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
      if (any(len(a) != per * spec.num_examples for a in arrays.values())
          or len(records) != per * spec.num_examples):
        return None
      out[subset] = (arrays, records)
    return out
  except (OSError, ValueError):
    return None


def load_or_generate_challenges(spec: ChallengeSpec, cache_dir: str | os.PathLike | None = None,
                                progress: bool = True
                                ) -> dict[str, tuple[dict[str, np.ndarray], list[dict]]]:
  """{subset: (arrays, records)} for all CHALLENGES (see generate_challenge), cached on disk
  atomically like the v1 splits but under their own key (challenge_cache_path)."""
  path = challenge_cache_path(spec, cache_dir)
  cached = _read_challenges(path, spec)
  if cached is not None:
    if progress:
      print(f"rs_synth: loaded challenge subsets from {path}", file=sys.stderr)
    return cached
  workers = _num_workers(None)
  pool = _make_pool(workers) if workers > 1 else None
  try:
    with _staging_dir(path) as tmp:
      out = {}
      for subset in CHALLENGES:
        t0 = time.perf_counter()
        arrays, records = generate_challenge(spec, subset, pool=pool)
        for k, v in arrays.items():
          np.save(tmp / f"{subset}_{k}.npy", v)
        with open(tmp / f"{subset}.jsonl", "w", encoding="utf-8") as f:
          f.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        out[subset] = (arrays, records)
        if progress:
          print(f"rs_synth: generated {subset}: {len(records)} records at {spec.image_size}px "
                f"in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
      (tmp / "spec.json").write_text(json.dumps(dataclasses.asdict(spec), indent=1))
  finally:
    if pool is not None:
      pool.terminate()
  if progress:
    print(f"rs_synth: cached challenge subsets at {path}", file=sys.stderr)
  return out


def caption_labels(records: list[dict]) -> dict[str, np.ndarray]:
  """Per-caption labels of a multiscale or small_objects subset, flattened in caption order
  (the order of EvalSplit rows): {name: [T] array}.

  multiscale: "level" (str), "group" (int, -1 for scene level); small_objects: "role" (str),
  "distractor" (str), "count" (int: the small objects the caption's image shows).
  """
  subsets = {r.get("subset") for r in records}
  if subsets == {"multiscale"}:
    return {"level": np.asarray([lv for r in records for lv in r["levels"]]),
            "group": np.asarray([g for r in records for g in r["caption_groups"]], np.int32)}
  if subsets == {"small_objects"}:
    per = [(r, c) for r in records for c in r["captions"]]
    return {"role": np.asarray([r["role"] for r, _ in per]),
            "distractor": np.asarray([r["distractor"] for r, _ in per]),
            "count": np.asarray([r["groups"][0]["count"] for r, _ in per], np.int32)}
  raise ValueError(f"caption_labels takes multiscale or small_objects records, got {subsets}")
