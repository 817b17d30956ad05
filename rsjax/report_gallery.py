"""Heat maps drawn for people: a map blended over its image, and the report's gallery cells (a
result's thumbnail with, beside it, where it matches its query).

eval_gallery.npz holds 'maps' [Q, top, H, W] (whole-query heat maps, rsjax/evaluation/gallery.py)
since the heat maps exist; an older file has none and gets plain thumbnails.
"""

from __future__ import annotations

import io

import numpy as np

HIT, MISS, PLAIN = (30, 160, 60), (200, 40, 40), (235, 235, 235)
EPS = 1e-6


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.55,
            lo: float | None = None, hi: float | None = None) -> np.ndarray:
  """uint8 image [H, W, 3] and a map [H, W] -> uint8 [H, W, 3]: the map's colours (matplotlib's
  'inferno', scaled from lo to hi; default the map's own range) blended over the image."""
  from matplotlib import colormaps

  heat = np.asarray(heat, np.float32)
  lo = float(heat.min()) if lo is None else lo
  hi = float(heat.max()) if hi is None else hi
  scaled = np.clip((heat - lo) / max(hi - lo, EPS), 0.0, 1.0)
  colours = colormaps["inferno"](scaled)[..., :3] * 255.0
  return np.clip((1 - alpha) * image.astype(np.float32) + alpha * colours, 0, 255).astype(np.uint8)


def row_range(maps: np.ndarray | None, qi: int) -> tuple[float, float] | None:
  """One colour scale for query qi's row of maps [Q, top, H, W]: its lowest and highest value."""
  if maps is None:
    return None
  row = np.asarray(maps[qi], np.float32)
  return float(row.min()), float(row.max())


def cell(image: np.ndarray, hit: bool | None = None, heat: np.ndarray | None = None,
         scale: tuple[float, float] | None = None, size: int = 96) -> bytes:
  """uint8 image [H, W, 3], or a date sequence [T, H, W, 3] (before ... after, side by side) ->
  PNG bytes: enlarged to `size`, framed green (hit) or red (miss); with a heat map [H, W], its
  overlay (on the colour `scale` (lo, hi)) on the last date, beside them in the same PNG."""
  from PIL import Image, ImageOps

  image = np.asarray(image, np.uint8)
  dates = image if image.ndim == 4 else image[None]
  panels = [Image.fromarray(d).resize((size, size), Image.NEAREST) for d in dates]
  framed = len(panels)
  if heat is not None:
    # Bilinear for the map (a smooth field); the thumbnail keeps its pixels (nearest).
    heat = np.asarray(Image.fromarray(np.asarray(heat, np.float32)).resize((size, size),
                                                                              Image.BILINEAR))
    lo, hi = scale if scale else (None, None)
    panels.append(Image.fromarray(overlay(np.asarray(panels[framed - 1]), heat, lo=lo, hi=hi)))
  if hit is not None:
    panels = [ImageOps.expand(p, border=4, fill=(HIT if hit else MISS) if i < framed else PLAIN)
              for i, p in enumerate(panels)]
  out = Image.new("RGB", (sum(p.width for p in panels) + 4 * (len(panels) - 1), panels[0].height),
                  (255, 255, 255))
  for i, p in enumerate(panels):
    out.paste(p, (i * (p.width + 4), 0))
  buf = io.BytesIO()
  out.save(buf, format="PNG")
  return buf.getvalue()
