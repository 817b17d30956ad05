"""Tile footprints: where each image lies on the ground, and bounding-box filters over them.

A footprint is (west, south, east, north) in the image's map coordinates (degrees for the
geographic GeoTIFFs and lat/lon columns that RS archives carry); NaN where unknown. Sources:
- GeoTIFF: the ModelTiepoint (33922) and ModelPixelScale (33550) tags, read with tifffile; the
  tie point maps raster (i, j) to (x, y), and the scale gives the size of one pixel;
- captions.jsonl: `lon` and `lat` columns (a point), or `bbox` [west, south, east, north].
"""

from __future__ import annotations

import functools
import json
import math
import os

import numpy as np

from rsjax.errors import InputError

TIEPOINT, PIXEL_SCALE = 33922, 33550
TIFF_EXTENSIONS = (".tif", ".tiff")
UNKNOWN = (math.nan,) * 4


def geotiff_footprint(path: str) -> tuple[float, float, float, float]:
  """(west, south, east, north) of a GeoTIFF with a tie point and a pixel scale, else NaNs."""
  import tifffile

  try:
    with tifffile.TiffFile(path) as tif:
      page = tif.pages[0]
      tie, scale = page.tags.get(TIEPOINT), page.tags.get(PIXEL_SCALE)
      if tie is None or scale is None:
        return UNKNOWN
      i, j, _, x, y, _ = (float(v) for v in tie.value[:6])
      sx, sy = float(scale.value[0]), float(scale.value[1])
      height, width = page.shape[0], page.shape[1]
  except (tifffile.TiffFileError, OSError, ValueError, IndexError):
    return UNKNOWN  # a file that does not decode is reported by the image decoder, not here
  west, north = x - i * sx, y + j * sy  # raster rows run south
  return (west, north - height * sy, west + width * sx, north)


@functools.lru_cache(maxsize=2)  # read once per `rsjax index` run, not once per chunk
def jsonl_footprints(folder: str) -> dict[str, tuple[float, float, float, float]]:
  """{absolute image path: footprint} from the lon/lat or bbox columns of folder/captions.jsonl."""
  listing = os.path.join(folder, "captions.jsonl")
  found = {}
  if not os.path.isfile(listing):
    return found
  with open(listing, encoding="utf-8-sig") as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue  # the data layer reports bad lines; only the columns matter here
      if not isinstance(row, dict) or not isinstance(row.get("image"), str):
        continue
      box = None
      if isinstance(row.get("bbox"), list) and len(row["bbox"]) == 4:
        box = row["bbox"]
      elif "lon" in row and "lat" in row:
        box = [row["lon"], row["lat"], row["lon"], row["lat"]]
      try:
        box = tuple(float(v) for v in box) if box is not None else None
      except (TypeError, ValueError):
        box = None
      if box is not None:
        found[os.path.normpath(os.path.join(folder, row["image"]))] = box
  return found


def footprints_for(paths: list[str], archive: str) -> np.ndarray | None:
  """Footprints [N, 4] float64 of `paths` (NaN unknown), or None when none is known."""
  columns = jsonl_footprints(archive) if os.path.isdir(archive) else {}
  out = np.full((len(paths), 4), np.nan)
  for n, p in enumerate(paths):
    box = columns.get(os.path.normpath(p))
    if box is None and p.lower().endswith(TIFF_EXTENSIONS):
      box = geotiff_footprint(p)
    if box is not None:
      out[n] = box
  return out if np.isfinite(out).any() else None


def parse_bbox(text: str | None) -> tuple[float, float, float, float] | None:
  """'west,south,east,north' -> a tuple; None or '' -> None; anything else is refused."""
  if text is None or not text.strip():
    return None
  parts = text.split(",")
  try:
    box = tuple(float(p) for p in parts)
  except ValueError:
    box = ()
  if len(box) != 4 or not all(math.isfinite(v) for v in box):
    raise InputError(f"bbox {text[:60]!r} must be four numbers west,south,east,north")
  if box[0] > box[2] or box[1] > box[3]:
    raise InputError(f"bbox {text[:60]!r}: west must be <= east and south <= north")
  return box


class Footprints:
  """The footprints of an index's rows ([N, 4] or None) and the rows inside a bounding box."""

  def __init__(self, boxes: np.ndarray | None):
    self.boxes = boxes

  @property
  def known(self) -> int:
    return 0 if self.boxes is None else int(np.isfinite(self.boxes).all(1).sum())

  def extent(self) -> list[float] | None:
    """[west, south, east, north] around every known footprint."""
    if not self.known:
      return None
    ok = self.boxes[np.isfinite(self.boxes).all(1)]
    return [float(ok[:, 0].min()), float(ok[:, 1].min()), float(ok[:, 2].max()),
            float(ok[:, 3].max())]

  def subset(self, bbox) -> np.ndarray | None:
    """Sorted rows [S] int64 whose footprint meets `bbox` (None: no filter, all rows)."""
    if bbox is None:
      return None
    if self.boxes is None:
      raise InputError("this index holds no footprints (its images carry no georeferencing); "
                       "search without bbox")
    w, s, e, n = bbox
    b = self.boxes
    meets = (b[:, 0] <= e) & (b[:, 2] >= w) & (b[:, 1] <= n) & (b[:, 3] >= s)  # NaN: False
    return np.flatnonzero(meets).astype(np.int64)
