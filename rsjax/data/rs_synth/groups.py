"""Groups of objects on a tile: sample a group, paint what it stands on, lay out and record it.

A group is {cls, count, size, position (3x3 grid cell), context, color}; drawing it adds the
context (runway, road, parking lot, harbour, pond) to the float image [S, S, 3] and returns
placed objects {cls, L, cx, cy, angle, parts, hx, hy, color, ...} for `drawing.draw_object`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from rsjax.data import captions_grammar as grammar
from rsjax.data.rs_synth.drawing import ASPHALT, parts_fn_for
from rsjax.data.rs_synth.primitives import (Box, Part, blend, box_coverage, choice, extent,
                                            fill_box, grid, noise, unit)

SIZE_FRACTIONS = {"small": (0.03, 0.06), "medium": (0.09, 0.14), "large": (0.20, 0.30)}
SIZE_PROBS = (0.4, 0.35, 0.25)      # small objects are the point of the benchmark
CAR_COLORS = {"red": (200, 38, 32), "blue": (40, 75, 195), "yellow": (232, 200, 45),
              "white": (238, 238, 232)}
ROOF_COLORS = {"red": (168, 66, 50), "grey": (138, 140, 146)}
RUNWAY = np.array([66, 67, 70], np.float32)
CONCRETE = np.array([158, 154, 144], np.float32)
PARKING = np.array([146, 146, 143], np.float32)


def cell_box(position: str, size: int) -> Box:
  """The 3x3-grid cell named `position` as a pixel box."""
  r, c = divmod(grammar.POSITIONS.index(position), 3)
  s = size / 3
  return c * s, r * s, (c + 1) * s, (r + 1) * s


def sample_group(rng: np.random.Generator, cls: str, position: str, landcover: str,
                  size: str | None = None) -> dict:
  """Group parameters; `size` forces a size class (v1 draws it: the draw order is fixed)."""
  size = size or choice(rng, grammar.SIZES, SIZE_PROBS)
  count = 1 if size == "large" else int(rng.integers(1, 5))  # one large object fills a cell
  if cls == "ship":
    context = "water" if landcover == "water" else choice(rng, ("pond", "harbor"))
  elif cls == "plane":  # beside: the runway takes part of the cell, so only small planes
    context = "runway_beside" if size == "small" and rng.random() < 0.5 else "runway_on"
  elif cls == "car":
    context = choice(rng, ("road", "parking"))
  else:
    context = "none"
  color = None
  if cls == "car" and rng.random() < 0.6:
    color = choice(rng, tuple(CAR_COLORS))
  elif cls == "building":
    color = choice(rng, tuple(ROOF_COLORS))
  return {"cls": cls, "count": count, "size": size, "position": position, "context": context,
          "color": color}


def object_length(rng: np.random.Generator, size_name: str, image_size: int) -> int:
  lo, hi = SIZE_FRACTIONS[size_name]
  return max(2, int(round(rng.uniform(lo, hi) * image_size)))


def _band_box(cell: Box, axis: int, lo: float, hi: float, extend: float, size: int) -> Box:
  """Box spanning the cell along `axis` (0: horizontal band) +- extend, between lo..hi across."""
  x0, y0, x1, y1 = cell
  if axis == 0:
    return max(0, x0 - extend), lo, min(size, x1 + extend), hi
  return lo, max(0, y0 - extend), hi, min(size, y1 + extend)


def inset(box: Box, d: float) -> Box:
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
  fill_box(img, _band_box(cell, axis, lo, lo + width, extend, size), color)
  mid = lo + width / 2
  fill_box(img, _band_box(cell, axis, mid - 0.2, mid + 0.2, extend, size), (225, 225, 215), 0.45)
  return inset(_band_box(cell, axis, lo, lo + width, 0.0, size), 0.5), axis


def _ctx_runway_beside(img, rng, cell, group, lengths, water, extend, axis) -> tuple[Box, int]:
  """Runway along one side of the cell; planes on the rest, noses towards it."""
  size, side = img.shape[0], cell[2] - cell[0]
  width, start = side * 0.28, cell[1 - axis]
  first = rng.random() < 0.5
  lo = start if first else start + side - width
  fill_box(img, _band_box(cell, axis, lo, lo + width, extend, size), RUNWAY + rng.uniform(-6, 6))
  rest = (start + width + 1, start + side) if first else (start, start + side - width - 1)
  return inset(_band_box(cell, axis, rest[0], rest[1], 0.0, size), 0.5), 1 - axis


def _ctx_parking(img, rng, cell, group, lengths, water, extend, axis) -> tuple[Box, int]:
  """Light grey lot with stall lines; cars parked across the lines."""
  size = img.shape[0]
  lot = inset(cell, (cell[2] - cell[0]) * 0.04)
  fill_box(img, lot, PARKING + rng.uniform(-8, 8))
  step = max(lengths) * 0.55 + 1
  if step >= 3:  # stall lines only where they resolve
    for t in np.arange(lot[1 - axis] + step, lot[3 - axis], step):
      fill_box(img, _band_box(lot, axis, t - 0.2, t + 0.2, 0, size), (230, 230, 225), 0.5)
  return inset(lot, 0.5), 1 - axis


def _ctx_harbor(img, rng, cell, group, lengths, water, extend, axis) -> tuple[Box, int]:
  """Rectangular basin in a concrete quay frame."""
  q = max(1.0, (cell[2] - cell[0]) * 0.07)
  fill_box(img, inset(cell, -q), CONCRETE + rng.uniform(-8, 8, 3))
  rows, cols, cov = box_coverage(img.shape[0], cell)
  blend(img[rows, cols], cov, water()[rows, cols])
  return inset(cell, 0.5), axis


def _ctx_pond(img, rng, cell, group, lengths, water, extend, axis) -> tuple[Box, int]:
  """Rounded, slightly irregular water body (superellipse, p = 4) covering the cell."""
  size = img.shape[0]
  yy, xx = grid(size)
  cx, cy = (cell[0] + cell[2]) / 2, (cell[1] + cell[3]) / 2
  a = (cell[2] - cell[0]) * rng.uniform(0.6, 0.66)
  wobble = 0.05 * noise(rng, size, 6)
  rows, cols, _ = box_coverage(size, (cx - 1.2 * a, cy - 1.2 * a, cx + 1.2 * a, cy + 1.2 * a))
  dx, dy = (xx[rows, cols] - cx) / a, (yy[rows, cols] - cy) / a
  r = np.sqrt(np.sqrt(dx ** 4 + dy ** 4)) + wobble[rows, cols]
  region = img[rows, cols]
  blend(region, unit((1.08 - r) * a + 0.5) * 0.7, np.array([96, 90, 60], np.float32))  # bank
  blend(region, unit((1 - r) * a + 0.5), water()[rows, cols])
  return inset(cell, 0.5), axis


def _ctx_none(img, rng, cell, group, lengths, water, extend, axis) -> tuple[Box, int]:
  return inset(cell, 0.5), axis


CONTEXTS = {"runway_on": _ctx_band, "road": _ctx_band, "runway_beside": _ctx_runway_beside,
            "parking": _ctx_parking, "harbor": _ctx_harbor, "pond": _ctx_pond,
            "water": _ctx_none, "none": _ctx_none}


def draw_context(img: np.ndarray, rng: np.random.Generator, group: dict, lengths: list[int],
                  water: Callable[[], np.ndarray], on_water: bool) -> tuple[Box, int]:
  """Paint what the group stands on; return (placement box, axis objects align to: 0 = x)."""
  cell = cell_box(group["position"], img.shape[0])
  side = cell[2] - cell[0]
  axis = int(rng.integers(2))
  if on_water and group["cls"] != "ship":  # an island/pier so land objects are not afloat
    fill_box(img, inset(cell, -side * 0.05), CONCRETE + rng.uniform(-10, 10, 3))
  extend = 0.0 if on_water else side * 0.5   # runways/roads run on beyond the cell on land
  return CONTEXTS[group["context"]](img, rng, cell, group, lengths, water, extend, axis)


def fit_object(parts_fn, length: int, angle: float, box: Box
               ) -> tuple[int, list[Part], float, float]:
  """Shrink an object (length >= 2) until it fits in `box`; returns (L, parts, hx, hy)."""
  bw, bh = box[2] - box[0], box[3] - box[1]
  while True:
    parts = parts_fn(length)
    hx, hy = extent(parts, angle)
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


def _object_angle(rng: np.random.Generator, group: dict, axis: int, base: float) -> float:
  """Heading: along roads/runways, parked in rows, free on open water."""
  ctx, cls = group["context"], group["cls"]
  aligned = axis * np.pi / 2 + choice(rng, (0.0, np.pi))
  if cls == "storage tank":
    return 0.0
  if cls == "building":
    return base + rng.uniform(-0.05, 0.05)
  if ctx in ("road", "runway_on", "parking", "runway_beside", "harbor"):
    return float(aligned + rng.uniform(-0.08, 0.08))
  return float(rng.uniform(0, 2 * np.pi))


def layout_group(rng: np.random.Generator, group: dict, lengths: list[int], box: Box, axis: int,
                  landcover: str) -> list[dict]:
  """Objects of a group with centres inside box, not overlapping each other."""
  base = 0.0 if landcover == "urban" or rng.random() < 0.5 else rng.uniform(-0.5, 0.5)
  objs = []
  for length in sorted(lengths, reverse=True):  # big ones first: easier packing
    obj = {"cls": group["cls"], "L": length, "angle": _object_angle(rng, group, axis, base),
           "width_ratio": rng.uniform(0.5, 0.9), "wake": group["context"] == "water" and rng.random() < 0.5}
    if group["cls"] == "car":
      color = group["color"] or choice(rng, tuple(CAR_COLORS))
      obj["color"] = np.array(CAR_COLORS[color], np.float32) + rng.uniform(-8, 8, 3)
    elif group["cls"] == "building":
      obj["color"] = np.array(ROOF_COLORS[group["color"]], np.float32) + rng.uniform(-8, 8, 3)
    elif group["cls"] == "plane":
      obj["color"] = np.array([208, 210, 214], np.float32) + rng.uniform(-8, 8)
    else:
      obj["color"] = np.array([232, 232, 226], np.float32) + rng.uniform(-6, 6)
    objs.append(obj)
  for o in objs:
    o["L"], o["parts"], o["hx"], o["hy"] = fit_object(parts_fn_for(o), o["L"], o["angle"], box)
  centres = _place(rng, box, [(o["hx"], o["hy"]) for o in objs])
  if centres is None:  # crowded: one slot each, snapping headings to the grid, shrinking if needed
    centres = []
    for o, slot in zip(objs, _slots(box, len(objs), rng)):
      o["angle"] = round(o["angle"] / (np.pi / 2)) * (np.pi / 2)
      o["L"], o["parts"], o["hx"], o["hy"] = fit_object(parts_fn_for(o), o["L"], o["angle"], slot)
      centres += _place(rng, slot, [(o["hx"], o["hy"])], gap=0.0) or [
          ((slot[0] + slot[2]) / 2, (slot[1] + slot[3]) / 2)]
  for o, (cx, cy) in zip(objs, centres):
    o["cx"], o["cy"] = float(cx), float(cy)
  return objs


# --------------------------------------------------------------------------------------------
# What a drawn group covers and records.

def on_river(position: str, river_cov: np.ndarray, size: int) -> bool:
  rows, cols, _ = box_coverage(size, cell_box(position, size))
  return bool(river_cov[rows, cols].max() > 0)


def group_on_water(group: dict, landcover: str, river_cov: np.ndarray | None, size: int) -> bool:
  """Whether the group's cell is water (then land objects get a pad, see draw_context)."""
  if river_cov is not None and group["context"] == "none":  # keep tanks/buildings off the river
    return on_river(group["position"], river_cov, size)
  return landcover == "water"


def object_boxes(objs: list[dict]) -> list[list[int]]:
  """Object boxes [x0, y0, x1, y1] rounded outwards to whole pixels."""
  return [[int(math.floor(o["cx"] - o["hx"])), int(math.floor(o["cy"] - o["hy"])),
           int(math.ceil(o["cx"] + o["hx"])), int(math.ceil(o["cy"] + o["hy"]))] for o in objs]


def describe_objects(group: dict, objs: list[dict]) -> None:
  """Record what was drawn: object lengths and boxes."""
  group["pixel_sizes"] = [int(o["L"]) for o in objs]
  group["boxes"] = object_boxes(objs)
