"""What RS-Synth paints onto a tile: land cover backgrounds, rivers and roads, and objects.

Every painter works on float32 images [S, S, 3] (RGB in [0, 255]) in place, or returns one, and
draws only from the generator it is handed: the order of its draws is part of RS-Synth's bytes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from rsjax.data.rs_synth.primitives import (Part, blend, choice, colorize, grain, grid, noise,
                                            stamp, unit)

ASPHALT = np.array([112, 112, 110], np.float32)


# --------------------------------------------------------------------------------------------
# Land cover backgrounds: each returns [S, S, 3] float32.

def _bg_water(rng: np.random.Generator, size: int) -> np.ndarray:
  """Dark blue with faint directional ripples."""
  yy, xx = grid(size)
  a, period = rng.uniform(0, np.pi), size * rng.uniform(0.04, 0.08)
  phase = (xx * math.cos(a) + yy * math.sin(a)) * (2 * np.pi / period)
  ripple = np.sin(phase + 2.5 * noise(rng, size, 4))
  base = np.array([24, 50, 86]) + rng.uniform(-6, 6, 3) + np.array([0, 1, 1]) * rng.uniform(-6, 10)
  return colorize(base, (noise(rng, size, 3), (3, 6, 9)), (noise(rng, size, 8), (1.5, 3, 4)),
                   (ripple, (2, 3, 4.5)))


def _bg_forest(rng: np.random.Generator, size: int) -> np.ndarray:
  """Dark green blotches with tree-crown granularity."""
  crowns = noise(rng, size, max(4, size // 3))
  base = np.array([32, 68, 36]) + rng.uniform(-5, 5, 3)
  img = colorize(base, (noise(rng, size, 4), (7, 12, 6)), (noise(rng, size, size // 8), (4, 7, 4)),
                  (crowns, (6, 10, 5)))
  return img * (1 - 0.25 * unit(-crowns - 0.6))[..., None]  # gaps between crowns


def _bg_farmland(rng: np.random.Generator, size: int) -> np.ndarray:
  """Patchwork of parallel field strips in greens and yellow-browns, with crop rows."""
  yy, xx = grid(size)
  a = choice(rng, (0.0, np.pi / 2)) + rng.uniform(-0.3, 0.3)
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
  img = img * (1 + 0.05 * rows)[..., None] + noise(rng, size, size // 6)[..., None] * 5
  hedge = unit(1.2 - (fu - iu) * w1) * 0.22       # darker field borders
  return img * (1 - hedge)[..., None]


def _bg_bare_soil(rng: np.random.Generator, size: int) -> np.ndarray:
  """Tan/brown mottled noise with darker patches and grit."""
  base = np.array([172, 142, 104]) + rng.uniform(-10, 10, 3)
  patches = noise(rng, size, 5)
  img = colorize(base, (noise(rng, size, 3), (14, 12, 10)), (patches, (10, 9, 7)),
                  (noise(rng, size, size // 4), (7, 6, 5)),
                  (grain(rng, (size, size)), (5, 5, 4)))
  return img * (1 - 0.15 * unit(patches - 0.7))[..., None]


def _bg_urban(rng: np.random.Generator, size: int) -> np.ndarray:
  """Grey grid of city blocks separated by darker streets, some blocks green (parks)."""
  yy, xx = grid(size)
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
  img = img * (1 + 0.06 * np.where(lot, 1, -1))[..., None] + noise(rng, size, size // 4)[..., None] * 6
  edge = unit(street + 0.5 - np.minimum(fx, fy))   # anti-aliased street mask
  blend(img, edge, np.array([82, 82, 85], np.float32))
  return img


def _bg_grassland(rng: np.random.Generator, size: int) -> np.ndarray:
  """Light green noise with yellowish dry patches."""
  base = np.array([116, 160, 76]) + rng.uniform(-8, 8, 3)
  dry = np.clip(noise(rng, size, 4), 0, None)
  return colorize(base, (noise(rng, size, 3), (8, 10, 5)), (noise(rng, size, size // 5), (5, 7, 4)),
                   (dry, (18, 8, 4)), (grain(rng, (size, size)), (3, 4, 2)))


BACKGROUNDS = {"water": _bg_water, "forest": _bg_forest, "farmland": _bg_farmland,
               "bare soil": _bg_bare_soil, "urban": _bg_urban, "grassland": _bg_grassland}


# --------------------------------------------------------------------------------------------
# Linear features across the whole image.

def draw_river(img: np.ndarray, rng: np.random.Generator,
                water: Callable[[], np.ndarray]) -> np.ndarray:
  """Meandering blue band with sandy banks; returns its water coverage [S, S]."""
  size = img.shape[0]
  yy, xx = grid(size)
  a = rng.uniform(0, np.pi)
  u = (xx - size / 2) * math.cos(a) + (yy - size / 2) * math.sin(a)
  v = (yy - size / 2) * math.cos(a) - (xx - size / 2) * math.sin(a)
  centre = (size * rng.uniform(-0.3, 0.3) + size * rng.uniform(0.03, 0.1)
            * np.sin(u * (2 * np.pi / (size * rng.uniform(0.6, 1.4))) + rng.uniform(0, 2 * np.pi)))
  d = np.abs(v - centre)
  half = size * rng.uniform(0.035, 0.06)
  blend(img, unit(half + 1.5 - d) * 0.6, np.array([176, 160, 120], np.float32))
  cov = unit(half + 0.5 - d)
  blend(img, cov, water())
  return cov


def draw_road(img: np.ndarray, rng: np.random.Generator) -> None:
  """Straight grey road through a random point at a random angle, with a faint centre line."""
  size = img.shape[0]
  yy, xx = grid(size)
  a = rng.uniform(0, np.pi)
  px, py = rng.uniform(0.2, 0.8, 2) * size
  d = np.abs((yy - py) * math.cos(a) - (xx - px) * math.sin(a))
  half = max(1.0, size * rng.uniform(0.02, 0.032))
  blend(img, unit(half + 0.5 - d), ASPHALT + rng.uniform(-8, 8))
  if half >= 1.5:
    blend(img, unit(0.7 - d) * 0.5, np.array([215, 215, 200], np.float32))


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


def draw_object(img: np.ndarray, obj: dict, sun: tuple[float, float]) -> None:
  """Draw one placed object {cls, L, cx, cy, angle, color, ...} with its shadow/details."""
  cls, length, cx, cy, a = obj["cls"], obj["L"], obj["cx"], obj["cy"], obj["angle"]
  parts = obj["parts"]
  if cls == "ship":
    if obj.get("wake"):
      wake = [("ellipse", -0.95 * length, 0.0, 0.75 * length, max(0.5, 0.2 * length), 0.0)]
      stamp(img, cx, cy, a, wake, (120, 150, 170), alpha=0.35)
    stamp(img, cx, cy, a, parts, obj["color"])
    if length >= 7:  # superstructure
      deck = [("rect", -0.18 * length, 0.0, 0.12 * length, 0.07 * length, 0.0)]
      stamp(img, cx, cy, a, deck, (150, 150, 150))
    return
  k = {"plane": 0.12, "car": 0.12, "storage tank": 0.2, "building": 0.2}[cls]
  sx, sy = _shadow_offset(length, sun, k)
  stamp(img, cx + sx, cy + sy, a, parts, None, shadow=0.65)
  detailed_tank = cls == "storage tank" and length >= 5
  stamp(img, cx, cy, a, parts, obj["color"] * (0.86 if detailed_tank else 1.0))
  if detailed_tank:
    # A grey rim around a bright lid reads as a cylinder; the offset shadow is the dark edge.
    stamp(img, cx, cy, a, _tank_parts(length * 0.8), obj["color"] * 1.02)
    stamp(img, cx, cy, a, _tank_parts(max(1.0, length * 0.12)), (170, 170, 168))
  elif cls == "building" and length >= 6:
    half_roof = [("rect", 0.0, -obj["parts"][0][4] / 2, length / 2, obj["parts"][0][4] / 2, 0.0)]
    stamp(img, cx, cy, a, half_roof, np.asarray(obj["color"]) * 1.15, alpha=0.6)
  elif cls == "car" and length >= 6:
    glass = [("rect", 0.15 * length, 0.0, 0.07 * length, 0.19 * length, 0.0)]
    stamp(img, cx, cy, a, glass, (40, 45, 55), alpha=0.8)


def parts_fn_for(obj: dict) -> Callable[[float], list[Part]]:
  """The part-list builder of a placed object {cls, width_ratio, ...}: length -> parts."""
  cls = obj["cls"]
  if cls == "building":
    return functools.partial(_building_parts, width_ratio=obj["width_ratio"])
  return {"plane": _plane_parts, "ship": _ship_parts, "car": _car_parts,
          "storage tank": _tank_parts}[cls]
