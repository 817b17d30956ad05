"""RS-Synth v1 scenes: one land cover, an optional road / river and 1-2 object groups per tile.

`render_example` makes one train/val/test example, image [H, W, 3] uint8 and its record with
five captions, as a pure function of (spec.seed, split, index). The v2 challenge subsets reuse
`draw_scene`, `water_source` and `finish` on their own random streams.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from rsjax.errors import ConfigError
from rsjax.data import captions_grammar as grammar
from rsjax.data.rs_synth.drawing import BACKGROUNDS, draw_object, draw_river, draw_road
from rsjax.data.rs_synth.groups import (describe_objects, draw_context, group_on_water,
                                        layout_group, object_length, sample_group)
from rsjax.data.rs_synth.primitives import choice, grain

SPLITS = ("train", "val", "test")


def check_image_size(image_size: int) -> None:
  """Tiles hold a 3x3 grid of object cells: below 16 px a cell has no room for an object."""
  if image_size < 16:
    raise ConfigError(f"config key 'data.image_size': RS-Synth's image_size must be >= 16 (3x3 "
                      f"grid of objects), got {image_size}")


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
    check_image_size(self.image_size)
    if min(self.num_train, self.num_val, self.num_test) < 0:
      raise ConfigError(f"config keys 'data.num_train' / 'data.num_val' / 'data.num_test': "
                        f"RS-Synth split sizes must be >= 0, got {self.num_train} / "
                        f"{self.num_val} / {self.num_test}")

  def num_examples(self, split: str) -> int:
    return {"train": self.num_train, "val": self.num_val, "test": self.num_test}[split]


LANDCOVERS = grammar.LANDCOVERS
CLASSES = grammar.CLASSES
ROAD_PROB = 0.4
RIVER_PROB = 0.3                    # of non-water images


def _lazy_water(rng: np.random.Generator, size: int) -> Callable[[], np.ndarray]:
  """Water texture [S, S, 3] made on first call: most images never need one."""
  made: list[np.ndarray] = []

  def get() -> np.ndarray:
    if not made:
      made.append(BACKGROUNDS["water"](rng, size))
    return made[0]
  return get


def finish(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Brightness/colour jitter and sensor noise, then quantize to uint8."""
  size = img.shape[0]
  gain = rng.uniform(0.9, 1.1) * rng.uniform(0.96, 1.04, 3).astype(np.float32)
  img = img * gain + 2.5 * grain(rng, (size, size, 3))
  return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def water_source(img: np.ndarray, landcover: str, seed: list[int]) -> Callable[[], np.ndarray]:
  """The water texture for rivers/ponds/harbours: the background itself on water, else made on
  demand from its own stream (`seed`), so images that need none do not pay for it."""
  if landcover == "water":
    water_img = img.copy()
    return lambda: water_img
  return _lazy_water(np.random.default_rng(seed), img.shape[0])


def draw_scene(rng: np.random.Generator, water_seed: list[int], size: int
               ) -> tuple[np.ndarray, dict]:
  """A v1 scene before captions and finishing: float image [S, S, 3] and {"landcover", "groups",
  "road", "river"}. The order of random draws here defines RS-Synth v1's bytes: do not reorder."""
  landcover = choice(rng, LANDCOVERS)
  img = BACKGROUNDS[landcover](rng, size)
  water = water_source(img, landcover, water_seed)
  road = bool(rng.random() < ROAD_PROB)
  river_cov = None
  if landcover != "water" and rng.random() < RIVER_PROB:
    river_cov = draw_river(img, rng, water)
  if road:
    draw_road(img, rng)

  n_groups = 1 if rng.random() < 0.5 else 2
  classes = rng.permutation(len(CLASSES))[:n_groups]
  positions = rng.permutation(len(grammar.POSITIONS))[:n_groups]
  groups = [sample_group(rng, CLASSES[c], grammar.POSITIONS[p], landcover)
            for c, p in zip(classes, positions)]
  lengths = [[object_length(rng, g["size"], size) for _ in range(g["count"])] for g in groups]
  placements = [draw_context(img, rng, g, ls, water, group_on_water(g, landcover, river_cov, size))
                for g, ls in zip(groups, lengths)]
  sun = (math.cos(a := rng.uniform(0, 2 * np.pi)), math.sin(a))
  for g, ls, (box, axis) in zip(groups, lengths, placements):
    objs = layout_group(rng, g, ls, box, axis, landcover)
    for o in objs:
      draw_object(img, o, sun)
    describe_objects(g, objs)
  return img, {"landcover": landcover, "groups": groups, "road": road,
               "river": river_cov is not None}


def render_example(spec: SynthSpec, split: str, index: int) -> tuple[np.ndarray, dict]:
  """One image [H, W, 3] uint8 and its record.

  Record: {"captions": [5 str], "landcover", "groups": [{"cls", "count", "size", "position",
  "context", "color", "pixel_sizes": [count int], "boxes": [[x0, y0, x1, y1] int]}], "road",
  "river", "split", "index"}. Deterministic: rng = default_rng([seed, split_id, index]).
  """
  sid = SPLITS.index(split)
  rng = np.random.default_rng([spec.seed, sid, index])
  img, scene = draw_scene(rng, [spec.seed, sid, index, 1], int(spec.image_size))
  captions = grammar.make_captions(scene["landcover"], scene["groups"], rng, road=scene["road"],
                                   river=scene["river"])
  record = {"captions": captions, **scene, "split": split, "index": int(index)}
  return finish(img, rng), record
