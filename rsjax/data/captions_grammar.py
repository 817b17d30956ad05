"""The caption grammar of RS-Synth: five true, discriminative captions per image.

A group is a dict {"cls", "count", "size", "position", "context", "color"} as produced by
`rs_synth`; `context` says what the group was drawn on (it gives the relation phrase) and `color`
is the uniform car colour / roof colour or None. Captions are lowercase words separated by single
spaces, with no punctuation, and use only `VOCABULARY` (v1 splits: `VOCABULARY_V1`).

The v2 challenge subsets add scene-level captions, "there are no ..." captions for small-object
distractors and change captions for image pairs (end of this file).

The five captions of an image go from fine to coarse and end with a paraphrase:
  1. detail      "two small planes beside a runway in the upper left"
  2. scene       "an aerial image of farmland with two planes and a large storage tank"
  3. group + land cover  "three medium ships in the lower right of the water"
  4. count/size  "there are four small cars on a road in the center of an urban area"
  5. paraphrase  "a forest area with a big tank at the top"
With two groups, captions 1 and 3 describe different groups, 2 names both and 4/5 split between
them, so every group is mentioned at least three times (small groups always with their size).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

CLASSES = ("plane", "ship", "car", "storage tank", "building")
SIZES = ("small", "medium", "large")
POSITIONS = ("upper left", "top", "upper right", "left", "center", "right",
             "lower left", "bottom", "lower right")
LANDCOVERS = ("water", "forest", "farmland", "bare soil", "urban", "grassland")

# (singular, plural) noun forms; the first pair is the canonical class word.
CLASS_NOUNS: dict[str, tuple[tuple[str, str], ...]] = {
    "plane": (("plane", "planes"), ("airplane", "airplanes"), ("aircraft", "aircraft")),
    "ship": (("ship", "ships"), ("boat", "boats"), ("vessel", "vessels")),
    "car": (("car", "cars"), ("vehicle", "vehicles")),
    "storage tank": (("storage tank", "storage tanks"), ("tank", "tanks"),
                     ("oil tank", "oil tanks")),
    "building": (("building", "buildings"), ("house", "houses")),
}
# Every noun form of a class, for checking that a caption names it.
CLASS_WORDS: dict[str, frozenset[str]] = {
    c: frozenset(w for pair in forms for w in pair) for c, forms in CLASS_NOUNS.items()}

SIZE_WORDS: dict[str, tuple[str, ...]] = {   # canonical word first, then synonyms
    "small": ("small", "tiny"),
    "medium": ("medium", "medium sized"),
    "large": ("large", "big"),
}
COUNT_WORDS: dict[int, tuple[str, ...]] = {  # "a" becomes "an" before a vowel
    1: ("a", "one", "a single"),
    2: ("two", "a pair of"),
    3: ("three",),
    4: ("four",),
}
POSITION_PHRASES: dict[str, str] = {
    "upper left": "in the upper left", "top": "at the top", "upper right": "in the upper right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "lower left": "in the lower left", "bottom": "at the bottom", "lower right": "in the lower right",
}
CORNERS = ("upper left", "upper right", "lower left", "lower right")

VIEWS = ("an aerial image", "an aerial view", "a satellite image", "a remote sensing image",
         "an overhead image")

# Land cover phrases by grammatical slot: after "of" (scene), as a sentence subject (area), and
# after "of the" (of_the).
LANDCOVER_PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "water": {"scene": ("open water", "a lake"), "area": ("a water area", "a lake"),
              "of_the": ("water", "lake")},
    "forest": {"scene": ("a forest", "dense forest", "woodland"),
               "area": ("a forest area", "a forest"), "of_the": ("forest", "woodland")},
    "farmland": {"scene": ("farmland", "cropland", "agricultural fields"),
                 "area": ("a farmland area", "farmland"), "of_the": ("farmland", "fields")},
    "bare soil": {"scene": ("bare soil", "barren land"),
                  "area": ("a bare soil area", "a barren area"),
                  "of_the": ("bare soil", "barren land")},
    "urban": {"scene": ("an urban area", "a city"), "area": ("an urban area", "a city area"),
              "of_the": ("urban area", "city")},
    "grassland": {"scene": ("grassland", "a meadow"), "area": ("a grassland area", "a meadow"),
                  "of_the": ("grassland", "meadow")},
}
# Every land cover phrase contains one of these words (for tests and analysis).
LANDCOVER_WORDS: dict[str, frozenset[str]] = {
    "water": frozenset({"water", "lake"}), "forest": frozenset({"forest", "woodland"}),
    "farmland": frozenset({"farmland", "cropland", "agricultural", "fields"}),
    "bare soil": frozenset({"bare", "barren"}), "urban": frozenset({"urban", "city"}),
    "grassland": frozenset({"grassland", "meadow"}),
}

# What the group stands on -> relation phrases ("" = none).
RELATIONS: dict[str, tuple[str, ...]] = {
    "runway_on": ("on a runway",),
    "runway_beside": ("beside a runway", "next to a runway"),
    "road": ("on a road",),
    "parking": ("in a parking lot",),
    "water": ("on the water",),
    "pond": ("on a pond",),
    "harbor": ("in a harbor",),
    "none": ("",),
}
COLORS = ("red", "blue", "yellow", "white", "grey")
FEATURES: dict[tuple[bool, bool], str] = {   # (road, river) -> scene suffix
    (True, False): "crossed by a road", (False, True): "crossed by a river",
    (True, True): "crossed by a road and a river",
}

TEMPLATES: dict[str, tuple[str, ...]] = {
    "detail": ("{np} {rel} {pos}", "{np} {rel} {pos} of the image"),
    "scene": ("{view} of {lc} {feat} with {nps}", "{nps} in {view} of {lc} {feat}"),
    "group_lc": ("{np} {pos} of the {lc}", "{np} {rel} {pos} of the {lc}"),
    "count": ("there {be} {np} {rel} {pos} of {lc}", "{np} can be seen {rel} {pos} of {lc}"),
    "paraphrase": ("{lc} with {np} {pos}", "{view} showing {np} {rel} {pos}",
                   "{pos} there {be} {np} {rel}"),
}
_EXTRA_WORDS = ("an", "is", "are", "and", "with", "roof", "roofs", "corner")


def _words_of(texts) -> set[str]:
  out: set[str] = set()
  for t in texts:
    out.update(re.sub(r"\{\w+\}", " ", t).split())
  return out


def _all_vocabulary() -> frozenset[str]:
  texts: list[str] = list(_EXTRA_WORDS) + list(COLORS) + list(VIEWS)
  texts += [w for forms in CLASS_NOUNS.values() for pair in forms for w in pair]
  texts += [w for ws in SIZE_WORDS.values() for w in ws]
  texts += [w for ws in COUNT_WORDS.values() for w in ws]
  texts += list(POSITION_PHRASES.values()) + list(FEATURES.values())
  texts += [r for rs in RELATIONS.values() for r in rs]
  texts += [p for slots in LANDCOVER_PHRASES.values() for ps in slots.values() for p in ps]
  texts += [t for ts in TEMPLATES.values() for t in ts]
  return frozenset(_words_of(texts))


VOCABULARY: frozenset[str] = _all_vocabulary()


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
  return options[int(rng.integers(len(options)))]


def _tidy(text: str) -> str:
  """Collapse the double spaces left by empty slots."""
  return " ".join(text.split())


def _with_article(words: list[str]) -> list[str]:
  """Fix "a" -> "an" before a vowel ("an airplane", "an oil tank")."""
  out = list(words)
  for i in range(len(out) - 1):
    if out[i] == "a" and out[i + 1][:1] in "aeiou":
      out[i] = "an"
  return out


def group_phrase(group: dict, rng: np.random.Generator, *, size: str = "canonical",
                 synonyms: bool = False, attributes: bool = True) -> str:
  """Noun phrase for a group: "two small red cars", "a big house with a red roof".

  size: "canonical" (small/medium/large), "synonym" (tiny/medium sized/big) or "none".
  synonyms: draw the noun from all class synonyms instead of the canonical class word.
  """
  count = int(group["count"])
  words = _pick(rng, COUNT_WORDS[count]).split()
  if size == "canonical":
    words.append(SIZE_WORDS[group["size"]][0])
  elif size == "synonym":
    words += _pick(rng, SIZE_WORDS[group["size"]][1:]).split()
  color = group.get("color")
  if attributes and color and group["cls"] == "car" and rng.random() < 0.6:
    words.append(color)
  forms = CLASS_NOUNS[group["cls"]]
  pair = forms[int(rng.integers(len(forms)))] if synonyms else forms[0]
  words += pair[0 if count == 1 else 1].split()
  if attributes and color and group["cls"] == "building" and rng.random() < 0.5:
    words += ["with", "a", color, "roof"] if count == 1 else ["with", color, "roofs"]
  return " ".join(_with_article(words))


def relation_phrase(group: dict, rng: np.random.Generator) -> str:
  return _pick(rng, RELATIONS[group.get("context") or "none"])


def position_phrase(group: dict, rng: np.random.Generator | None = None) -> str:
  """"in the upper left" (optionally "... corner" for corners when rng is given)."""
  phrase = POSITION_PHRASES[group["position"]]
  if rng is not None and group["position"] in CORNERS and rng.random() < 0.3:
    phrase += " corner"
  return phrase


def _be(group: dict) -> str:
  return "is" if int(group["count"]) == 1 else "are"


def _lc(landcover: str, slot: str, rng: np.random.Generator) -> str:
  return _pick(rng, LANDCOVER_PHRASES[landcover][slot])


def detail_caption(group: dict, landcover: str, rng: np.random.Generator) -> str:
  """Caption 1: "two small planes beside a runway in the upper left"."""
  del landcover
  t = _pick(rng, TEMPLATES["detail"]) if rng.random() < 0.3 else TEMPLATES["detail"][0]
  return _tidy(t.format(np=group_phrase(group, rng), rel=relation_phrase(group, rng),
                        pos=position_phrase(group, rng)))


def scene_caption(groups: Sequence[dict], landcover: str, rng: np.random.Generator,
                  road: bool = False, river: bool = False) -> str:
  """Caption 2: "an aerial image of farmland with two planes and a large storage tank".

  Sizes are optional here except for small groups, which must stay findable.
  """
  nps = " and ".join(
      group_phrase(g, rng, size="canonical" if g["size"] == "small" or rng.random() < 0.5
                   else "none", attributes=False)
      for g in groups)
  # Linear features only with one group: keeps captions short enough for the text tower.
  feat = FEATURES.get((road, river), "") if len(groups) == 1 and rng.random() < 0.5 else ""
  t = _pick(rng, TEMPLATES["scene"])
  return _tidy(t.format(view=_pick(rng, VIEWS), lc=_lc(landcover, "scene", rng), feat=feat,
                        nps=nps))


def group_landcover_caption(group: dict, landcover: str, rng: np.random.Generator) -> str:
  """Caption 3: "three medium ships in the lower right of the water"."""
  with_rel = group.get("context") not in (None, "none", "water") and rng.random() < 0.5
  t = TEMPLATES["group_lc"][1 if with_rel else 0]
  return _tidy(t.format(np=group_phrase(group, rng), rel=relation_phrase(group, rng),
                        pos=position_phrase(group), lc=_lc(landcover, "of_the", rng)))


def count_caption(group: dict, landcover: str, rng: np.random.Generator) -> str:
  """Caption 4: "there are four small cars on a road in the center of an urban area"."""
  t = _pick(rng, TEMPLATES["count"])
  return _tidy(t.format(be=_be(group), np=group_phrase(group, rng),
                        rel=relation_phrase(group, rng), pos=position_phrase(group),
                        lc=_lc(landcover, "area", rng)))


def paraphrase_caption(group: dict, landcover: str, rng: np.random.Generator) -> str:
  """Caption 5: synonyms and other word orders: "a forest area with a big tank at the top"."""
  t = _pick(rng, TEMPLATES["paraphrase"])
  return _tidy(t.format(lc=_lc(landcover, "area", rng), view=_pick(rng, VIEWS), be=_be(group),
                        np=group_phrase(group, rng, size="synonym", synonyms=True),
                        rel=relation_phrase(group, rng), pos=position_phrase(group, rng)))


GROUP_KINDS = (detail_caption, group_landcover_caption, count_caption, paraphrase_caption)


def make_captions(landcover: str, groups: Sequence[dict], rng: np.random.Generator,
                  road: bool = False, river: bool = False) -> list[str]:
  """Five distinct captions [detail, scene, group+land cover, count, paraphrase]."""
  if not 1 <= len(groups) <= 2:
    raise ValueError(f"RS-Synth images have 1 or 2 groups, got {len(groups)}")
  order = list(groups) if rng.random() < 0.5 else list(groups)[::-1]
  a, b = order[0], order[-1]
  swap = rng.random() < 0.5
  plan = [
      lambda: detail_caption(a, landcover, rng),
      lambda: scene_caption(order, landcover, rng, road, river),
      lambda: group_landcover_caption(b, landcover, rng),
      lambda: count_caption(b if swap else a, landcover, rng),
      lambda: paraphrase_caption(a if swap else b, landcover, rng),
  ]
  captions: list[str] = []
  for make in plan:
    text = make()
    for _ in range(20):  # templates rarely collide; redraw the wording if one does
      if text not in captions:
        break
      text = make()
    captions.append(text)
  return captions


# --------------------------------------------------------------------------------------------
# RS-Synth v2 challenge subsets. These functions never run for the v1 splits, so v1 captions
# (and the random draws that make them) are unchanged.

# Multi-scale: scene-level captions name the land cover, roads / rivers and which kinds of objects
# are there, never a size, a position or a number; object-level ones are v1's group captions.
SCENE_LEVEL_TEMPLATES = ("{view} of {lc} {feat}", "{lc_area} with {classes}")
LEVELS = ("scene", "object")


def _class_mention(group: dict) -> str:
  """"a plane" / "planes": the kind of object, not how many (singular only for one)."""
  singular, plural = CLASS_NOUNS[group["cls"]][0]
  return " ".join(_with_article(["a"] + singular.split())) if int(group["count"]) == 1 else plural


def scene_level_captions(groups: Sequence[dict], landcover: str, rng: np.random.Generator,
                         road: bool = False, river: bool = False) -> list[str]:
  """Two scene-level captions: "an aerial view of farmland crossed by a road",
  "a farmland area with planes and a storage tank"."""
  classes = " and ".join(_class_mention(g) for g in groups)
  first = SCENE_LEVEL_TEMPLATES[0].format(view=_pick(rng, VIEWS), lc=_lc(landcover, "scene", rng),
                                          feat=FEATURES.get((road, river), ""))
  second = SCENE_LEVEL_TEMPLATES[1].format(lc_area=_lc(landcover, "area", rng), classes=classes)
  return [_tidy(first), _tidy(second)]


def object_level_captions(groups: Sequence[dict], landcover: str,
                          rng: np.random.Generator) -> list[tuple[str, int]]:
  """Two object-level captions as (text, index of the group it describes): both groups once, or
  the only group in two wordings ("two small planes beside a runway in the upper left")."""
  if len(groups) == 1:
    first = detail_caption(groups[0], landcover, rng)
    second = count_caption(groups[0], landcover, rng)
    return [(first, 0), (second, 0)]
  return [(detail_caption(g, landcover, rng), i) for i, g in enumerate(groups)]


# Small objects: when the distractor image lost all of a small group, its caption says so.
ABSENT_TEMPLATES = ("there are no {nouns} {rel} {pos} of {lc}",
                    "no {nouns} can be seen {rel} {pos} of {lc}")


def absent_caption(group: dict, landcover: str, rng: np.random.Generator) -> str:
  """"there are no cars on a road in the upper left of an urban area": the group's place and
  context are there, its objects are not."""
  t = _pick(rng, ABSENT_TEMPLATES)
  return _tidy(t.format(nouns=CLASS_NOUNS[group["cls"]][0][1], rel=relation_phrase(group, rng),
                        pos=position_phrase(group), lc=_lc(landcover, "area", rng)))


# Temporal: change captions for a before/after pair (LEVIR-CC style).
CHANGE_TYPES = ("none", "buildings_added", "buildings_removed", "road_built")
CHANGE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "buildings_added": ("{np} {was} built {pos}", "{np} {was} constructed {pos}",
                        "{np} {was} added {pos} of the {lc}"),
    "buildings_removed": ("{np} {was} demolished {pos}", "{np} {was} removed {pos}",
                          "{np} {pos} of the {lc} {was} torn down"),
    "road_built": ("a road was built {dir} {pos}", "a new road was constructed {dir} {pos}",
                   "a new road runs {dir} {pos} of the {lc}"),
    "none": ("no change", "nothing has changed", "there is no change", "the scene is unchanged",
             "no change between the two images"),
}
ROAD_DIRECTIONS = {"horizontal": "from left to right", "vertical": "from top to bottom"}


def change_captions(change: str, landcover: str, rng: np.random.Generator, *,
                    group: dict | None = None, road: dict | None = None, n: int = 3) -> list[str]:
  """n distinct change captions: "two buildings were built in the upper left", "no change".

  group: the added / removed buildings (a group dict); road: {"orientation": "horizontal" |
  "vertical", "position": the grid cell in the middle of the road's band ("top", "center", ...)}.
  """
  if change not in CHANGE_TEMPLATES:
    raise ValueError(f"unknown change type {change!r}, expected one of {CHANGE_TYPES}")
  templates = list(CHANGE_TEMPLATES[change])
  order = [templates[i] for i in rng.permutation(len(templates))[:n]]
  out = []
  for t in order:
    if change == "road_built":
      text = t.format(dir=ROAD_DIRECTIONS[road["orientation"]],
                      pos=POSITION_PHRASES[road["position"]], lc=_lc(landcover, "of_the", rng))
    elif change != "none":
      size = "canonical" if rng.random() < 0.5 else "none"
      text = t.format(np=group_phrase(group, rng, size=size),
                      was="was" if int(group["count"]) == 1 else "were",
                      pos=position_phrase(group), lc=_lc(landcover, "of_the", rng))
    else:
      text = t
    out.append(_tidy(text))
  return out


def _v2_vocabulary() -> frozenset[str]:
  texts = list(SCENE_LEVEL_TEMPLATES) + list(ABSENT_TEMPLATES) + list(ROAD_DIRECTIONS.values())
  texts += [t for ts in CHANGE_TEMPLATES.values() for t in ts] + ["was", "were"]
  return frozenset(_words_of(texts))


# Every word a v1 or v2 caption may use (v1 captions use the v1 part only).
VOCABULARY_V1: frozenset[str] = VOCABULARY
VOCABULARY = VOCABULARY | _v2_vocabulary()
