"""RS-Synth v2 challenge subsets: one labelled example of multiscale, small_objects or temporal.

Each example is a pure function of (spec.seed, subset, index) on its own random streams (ids
10-12, apart from v1's split ids 0-2), so generating them never changes a v1 byte. Whole subsets
are made by `pool.generate_challenge`; `caption_labels` flattens their per-caption labels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from rsjax.errors import ConfigError
from rsjax.data import captions_grammar as grammar
from rsjax.data.rs_synth.drawing import (ASPHALT, BACKGROUNDS, draw_object, draw_river,
                                         draw_road, parts_fn_for)
from rsjax.data.rs_synth.groups import (cell_box, describe_objects, draw_context, fit_object,
                                        group_on_water, inset, layout_group, object_boxes,
                                        object_length, on_river, sample_group)
from rsjax.data.rs_synth.primitives import Box, blend, choice, grid, unit
from rsjax.data.rs_synth.scenes import (CLASSES, LANDCOVERS, RIVER_PROB, ROAD_PROB,
                                        check_image_size, draw_scene, finish, water_source)


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
    check_image_size(self.image_size)
    if self.num_examples < 0:
      raise ConfigError(f"config key 'data.challenge_size': RS-Synth challenge num_examples must "
                        f"be >= 0, got {self.num_examples}")


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
  img, scene = draw_scene(rng, seed + [1], int(spec.image_size))
  args = scene["groups"], scene["landcover"]
  scene_caps = grammar.scene_level_captions(*args, rng, road=scene["road"], river=scene["river"])
  object_caps = grammar.object_level_captions(*args, rng)
  record = {"subset": "multiscale", "index": int(index),
            "captions": scene_caps + [c for c, _ in object_caps],
            "levels": ["scene"] * len(scene_caps) + ["object"] * len(object_caps),
            "caption_groups": [-1] * len(scene_caps) + [g for _, g in object_caps], **scene}
  return finish(img, rng), record


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
  landcover = choice(rng, LANDCOVERS)
  img = BACKGROUNDS[landcover](rng, size)
  water = water_source(img, landcover, seed + [1])
  road = bool(rng.random() < ROAD_PROB)
  river_cov = None
  if landcover != "water" and rng.random() < RIVER_PROB:
    river_cov = draw_river(img, rng, water)
  if road:
    draw_road(img, rng)
  n_groups = 1 if rng.random() < 0.5 else 2   # the second group is bigger and in both images
  classes = rng.permutation(len(CLASSES))[:n_groups]
  positions = rng.permutation(len(grammar.POSITIONS))[:n_groups]
  sizes = ["small", choice(rng, ("medium", "large"))]
  groups = [sample_group(rng, CLASSES[c], grammar.POSITIONS[p], landcover, size=z)
            for c, p, z in zip(classes, positions, sizes)]
  lengths = [[min(SMALL_MAX_PX, object_length(rng, g["size"], size)) if g["size"] == "small"
              else object_length(rng, g["size"], size) for _ in range(g["count"])] for g in groups]
  placements = [draw_context(img, rng, g, ls, water, group_on_water(g, landcover, river_cov, size))
                for g, ls in zip(groups, lengths)]
  sun = (math.cos(a := rng.uniform(0, 2 * np.pi)), math.sin(a))
  layouts = [layout_group(rng, g, ls, box, axis, landcover)
             for g, ls, (box, axis) in zip(groups, lengths, placements)]
  small = layouts[0]
  for o in small:   # cap the footprint, not only the length (a rotated plane is wider than long)
    o["L"], o["parts"], o["hx"], o["hy"] = fit_object(parts_fn_for(o), o["L"], o["angle"],
                                                (0, 0, SMALL_MAX_PX, SMALL_MAX_PX))
    o["wake"] = False    # a wake would trail well beyond the object
  count = len(small)
  kind = "fewer" if count >= 2 and rng.random() < 0.5 else "removed"
  kept = sorted(rng.permutation(count)[:int(rng.integers(1, count))]) if kind == "fewer" else []
  for objs in layouts[1:]:
    for o in objs:
      draw_object(img, o, sun)

  images, records = [], []
  for role, visible in (("original", list(range(count))), ("distractor", kept)):
    canvas = img.copy()
    for i in visible:
      draw_object(canvas, small[i], sun)
    drawn = [dict(g) for g in groups]
    drawn[0]["count"] = len(visible)
    describe_objects(drawn[0], [small[i] for i in visible])
    drawn[0]["extents"] = [round(2 * max(small[i]["hx"], small[i]["hy"]), 3) for i in visible]
    for g, objs in zip(drawn[1:], layouts[1:]):
      describe_objects(g, objs)
    if visible:
      captions = [grammar.detail_caption(drawn[0], landcover, rng),
                  grammar.count_caption(drawn[0], landcover, rng)]
    else:
      captions = _distinct(lambda: grammar.absent_caption(drawn[0], landcover, rng), 2)
    hidden = [small[i] for i in range(count) if i not in visible]
    # The same finishing stream for both: identical illumination and sensor noise.
    images.append(finish(canvas, np.random.default_rng(seed + [2])))
    records.append({"subset": "small_objects", "index": 2 * int(index) + len(records),
                    "pair": int(index), "role": role, "distractor": kind, "captions": captions,
                    "landcover": landcover, "road": road, "river": river_cov is not None,
                    "groups": drawn, "hidden_boxes": object_boxes(hidden)})
  return np.stack(images), records


def _road_band(img: np.ndarray, rng: np.random.Generator, orientation: str, band: int) -> Box:
  """A straight, slightly tilted road inside one third of the image (band 0-2 from the top or the
  left); returns that third as a box."""
  size = img.shape[0]
  yy, xx = grid(size)
  third = size / 3
  half = max(1.0, size * rng.uniform(0.02, 0.032))
  tilt = rng.uniform(-0.04, 0.04)
  margin = half + 2 + abs(tilt) * size / 2     # the whole anti-aliased edge stays in the band
  centre = rng.uniform(band * third + margin, (band + 1) * third - margin)
  along, across = (xx, yy) if orientation == "horizontal" else (yy, xx)
  d = np.abs((across - centre) * math.cos(tilt) - (along - size / 2) * math.sin(tilt))
  blend(img, unit(half + 0.5 - d), ASPHALT + rng.uniform(-8, 8))
  if half >= 1.5:
    blend(img, unit(0.7 - d) * 0.5, np.array([215, 215, 200], np.float32))
  lo, hi = band * third, (band + 1) * third
  return (0.0, lo, float(size), hi) if orientation == "horizontal" else (lo, 0.0, hi, float(size))


def render_temporal(spec: ChallengeSpec, index: int, *, stream: int | None = None,
                    raw: bool = False, change_probs: tuple[float, ...] = CHANGE_PROBS
                    ) -> tuple[np.ndarray, np.ndarray, dict]:
  """A before/after pair, each [H, W, 3] uint8, and its record.

  stream: the random stream id of the example (default the temporal subset's, 12; the temporal
  train/val/test splits of rs_synth/temporal_splits.py use their own). raw: the unfinished float
  images [H, W, 3] (no illumination or sensor noise yet) and the side-stream seed prefix in the
  record's "_seed", for callers that add nuisance of their own. change_probs: over
  grammar.CHANGE_TYPES ("none" first).

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
  if stream is None:
    rng, seed = _streams(spec, "temporal", index)
  else:
    seed = [spec.seed, int(stream), int(index)]
    rng = np.random.default_rng(seed)
  landcover = choice(rng, TEMPORAL_LANDCOVERS)
  img = BACKGROUNDS[landcover](rng, size)
  water = water_source(img, landcover, seed + [1])
  river_cov = draw_river(img, rng, water) if rng.random() < RIVER_PROB else None
  change = choice(rng, grammar.CHANGE_TYPES, change_probs)

  region, region_cells, road, buildings = None, (), None, None
  if change == "road_built":
    orientation = choice(rng, ("horizontal", "vertical"))
    band = int(rng.integers(3))
    region_cells = tuple(band * 3 + k if orientation == "horizontal" else k * 3 + band
                         for k in range(3))
    region = grammar.POSITIONS[region_cells[1]]
    road = {"orientation": orientation, "position": region}
  elif change != "none":
    dry = [p for p in grammar.POSITIONS if river_cov is None or not on_river(p, river_cov, size)]
    region = choice(rng, tuple(dry or grammar.POSITIONS))
    region_cells = (grammar.POSITIONS.index(region),)
  # An unchanged group elsewhere, so that objects alone do not signal a change.
  groups = []
  if rng.random() < 0.7:
    free = [p for i, p in enumerate(grammar.POSITIONS) if i not in region_cells]
    groups.append(sample_group(rng, choice(rng, CLASSES), choice(rng, tuple(free)), landcover))
  lengths = [[object_length(rng, g["size"], size) for _ in range(g["count"])] for g in groups]
  placements = [draw_context(img, rng, g, ls, water, group_on_water(g, landcover, river_cov, size))
                for g, ls in zip(groups, lengths)]
  sun = (math.cos(a := rng.uniform(0, 2 * np.pi)), math.sin(a))
  layouts = [layout_group(rng, g, ls, box, axis, landcover)
             for g, ls, (box, axis) in zip(groups, lengths, placements)]

  before, after = img, img.copy()
  if road is not None:
    region_box = _road_band(after, rng, road["orientation"], region_cells[0] // 3
                            if road["orientation"] == "horizontal" else region_cells[0] % 3)
  elif change != "none":
    buildings = sample_group(rng, "building", region, landcover)
    b_lengths = [object_length(rng, buildings["size"], size) for _ in range(buildings["count"])]
    region_box = cell_box(region, size)
    b_objs = layout_group(rng, buildings, b_lengths, inset(region_box, 0.5), int(rng.integers(2)),
                           landcover)
    for o in b_objs:
      draw_object(after if change == "buildings_added" else before, o, sun)
    describe_objects(buildings, b_objs)
  else:
    region_box = None
  for g, objs in zip(groups, layouts):   # on top of everything, on both dates
    for o in objs:
      draw_object(before, o, sun)
      draw_object(after, o, sun)
    describe_objects(g, objs)

  captions = grammar.change_captions(change, landcover, rng, group=buildings, road=road)
  record = {"subset": "temporal", "index": int(index), "changed": change != "none",
            "change": change, "region": region,
            "region_box": None if region_box is None else [round(float(v), 3) for v in region_box],
            "captions": captions, "landcover": landcover, "river": river_cov is not None,
            "road": road, "buildings": buildings, "groups": groups}
  if raw:
    return before, after, {**record, "_seed": seed}
  return (finish(before, np.random.default_rng(seed + [2])),
          finish(after, np.random.default_rng(seed + [3])), record)


def challenge_arrays(subset: str) -> tuple[str, ...]:
  """Names of a subset's image arrays: generate_challenge's keys and the cache's files."""
  return ("before", "after") if subset == "temporal" else ("images",)


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
