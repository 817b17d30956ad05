"""RS augmentations on uint8 [H, W, C] images, with captions kept true to the image.

Aerial images have no canonical "up", so flips and 90-degree rotations are fair augmentations,
but they change what position words mean: after a left-right flip the "pond on the left" is on the
right. Each geometric transform is an element of the square's symmetry group, applied both to the
pixels and to the direction words of the pair's caption (left/right, top/bottom, upper/lower,
north/south/east/west and their compounds such as "upper left" or "north-east"; "horizontal" and
"vertical" swap under quarter turns). A caption with words whose meaning cannot be rewritten
safely ("above", "clockwise", ...) keeps its image unflipped and unrotated instead.

Random resized crop and optional colour jitter do not touch the caption.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from PIL import Image

# A direction as (x, y) with x to the east / right and y to the north / top.
_VERTICAL = {"north": ("compass", 1), "south": ("compass", -1),
             "top": ("top", 1), "bottom": ("top", -1),
             "upper": ("upper", 1), "lower": ("upper", -1)}
_HORIZONTAL = {"east": ("compass", 1), "west": ("compass", -1),
               "right": ("side", 1), "left": ("side", -1)}
_WORDS = {"compass": {(0, 1): "north", (0, -1): "south", (1, 0): "east", (-1, 0): "west"},
          "top": {(0, 1): "top", (0, -1): "bottom", (1, 0): "right", (-1, 0): "left"},
          "upper": {(0, 1): "upper", (0, -1): "lower", (1, 0): "right", (-1, 0): "left"},
          "side": {(0, 1): "top", (0, -1): "bottom", (1, 0): "right", (-1, 0): "left"}}
_DIAGONAL_VERTICAL = {"compass": ("north", "south"), "top": ("top", "bottom"),
                      "upper": ("upper", "lower")}
_DIAGONAL_HORIZONTAL = {"compass": ("east", "west"), "top": ("right", "left"),
                        "upper": ("right", "left")}

_V = "|".join(_VERTICAL)
_H = "|".join(_HORIZONTAL)
# Compounds first ("upper left", "north-east", "northwest", "top-right"), then single words.
_PATTERN = re.compile(rf"\b(?:(?P<v>{_V})(?P<sep>[- ]?)(?P<h>{_H})|(?P<w>{_V}|{_H})"
                      rf"|(?P<axis>horizontal(?:ly)?|vertical(?:ly)?))\b", re.IGNORECASE)
# Words whose geometric meaning is unclear in aerial captions (vertical relation or ground
# elevation? rotation sense?): pairs with these are not flipped or rotated.
_UNSAFE = re.compile(r"\b(above|below|beneath|clockwise|counterclockwise|anticlockwise|"
                     r"up|down|upward|downward|upside)\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Dihedral:
  """One of the 8 symmetries: first `flip` (mirror left-right), then `turns` quarter turns
  counter-clockwise."""
  flip: bool = False
  turns: int = 0

  def apply_image(self, image: np.ndarray) -> np.ndarray:
    """[..., H, W, C] -> transformed [..., W or H, H or W, C] (contiguous): every image of a
    date sequence [T, H, W, C] the same way."""
    out = image[..., ::-1, :] if self.flip else image
    return np.ascontiguousarray(np.rot90(out, self.turns, axes=(-3, -2))) if self.turns else \
        np.ascontiguousarray(out)

  def apply_pil(self, image: Image.Image) -> Image.Image:
    out = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if self.flip else image
    turn = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180,
            3: Image.Transpose.ROTATE_270}.get(self.turns % 4)
    return out.transpose(turn) if turn is not None else out  # PIL's ROTATE_90 is counter-clockwise

  def apply_vector(self, x: int, y: int) -> tuple[int, int]:
    if self.flip:
      x = -x
    for _ in range(self.turns % 4):
      x, y = -y, x  # counter-clockwise quarter turn
    return x, y

  @property
  def identity(self) -> bool:
    return not self.flip and self.turns % 4 == 0


def _match_case(word: str, like: str) -> str:
  if like.isupper() and len(like) > 1:
    return word.upper()
  return word.capitalize() if like[:1].isupper() else word


def rewrite_caption(caption: str, transform: Dihedral) -> str | None:
  """The caption with its direction words moved by `transform`; None if it cannot be trusted."""
  if transform.identity:
    return caption
  if _UNSAFE.search(caption):
    return None

  def replace(m: re.Match) -> str:
    if m.group("axis"):
      if transform.turns % 2 == 0:
        return m.group(0)
      word = m.group(0).lower()
      swapped = word.replace("horizontal", "vertical") if word.startswith("horizontal") \
          else word.replace("vertical", "horizontal")
      return _match_case(swapped, m.group(0))
    if m.group("w"):
      word = m.group("w")
      family, sign = _VERTICAL.get(word.lower(), (None, 0))
      vector = (0, sign)
      if family is None:
        family, sign = _HORIZONTAL[word.lower()]
        vector = (sign, 0)
      return _match_case(_WORDS[family][transform.apply_vector(*vector)], word)
    v, sep, h = m.group("v"), m.group("sep"), m.group("h")
    family, vy = _VERTICAL[v.lower()]
    _, hx = _HORIZONTAL[h.lower()]
    x, y = transform.apply_vector(hx, vy)
    style = family if family in _DIAGONAL_VERTICAL else "compass"
    up, down = _DIAGONAL_VERTICAL[style]
    right, left = _DIAGONAL_HORIZONTAL[style]
    return _match_case(up if y > 0 else down, v) + sep + (right if x > 0 else left)

  return _PATTERN.sub(replace, caption)


def random_dihedral(rng: np.random.Generator) -> Dihedral:
  return Dihedral(flip=bool(rng.integers(2)), turns=int(rng.integers(4)))


def random_box(height: int, width: int, rng: np.random.Generator,
               scale: tuple[float, float] = (0.5, 1.0),
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """(left, top, right, bottom) of a random crop covering `scale` of the area, aspect in `ratio`
  (Inception-style; after 10 misses, the central square)."""
  area = height * width
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    cw = int(round(np.sqrt(target * aspect)))
    ch = int(round(np.sqrt(target / aspect)))
    if 0 < cw <= width and 0 < ch <= height:
      top = int(rng.integers(height - ch + 1))
      left = int(rng.integers(width - cw + 1))
      return left, top, left + cw, top + ch
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  return left, top, left + side, top + side


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.5, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
  """[H, W, C] uint8 -> [size, size, C] uint8: a random_box crop resized to size x size."""
  return resize_box(image, random_box(image.shape[0], image.shape[1], rng, scale, ratio), size)


def resize_box(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
  """Crops box (left, top, right, bottom) and resizes it to [size, size, C] in one PIL call."""
  if image.shape[-1] == 3:
    out = Image.fromarray(image).resize((size, size), Image.BILINEAR, box=box)
    return np.asarray(out)
  planes = [np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, c]))
                       .resize((size, size), Image.BILINEAR, box=box))
            for c in range(image.shape[-1])]
  return np.stack(planes, axis=-1)


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = 0.2) -> np.ndarray:
  """Random brightness, contrast and saturation, each a factor in [1 - s, 1 + s]. uint8 in/out."""
  x = image.astype(np.float32)
  b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
  x = x * b
  mean = x.mean()
  x = (x - mean) * c + mean
  if x.shape[-1] == 3:
    gray = x @ np.asarray([0.299, 0.587, 0.114], np.float32)
    x = (x - gray[..., None]) * s + gray[..., None]
  return np.clip(x + 0.5, 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Which augmentations the train pipeline applies."""
  crop_scale: tuple[float, float] = (0.5, 1.0)  # (1, 1): no random crop, just resize
  dihedral: bool = True                          # flips and quarter turns (caption-aware)
  color_jitter: float = 0.0                      # 0: off


def augment_pair(image: np.ndarray | Image.Image, caption: str, size: int,
                 rng: np.random.Generator, config: AugmentConfig,
                 box: tuple[float, float, float, float] | None = None) -> tuple[np.ndarray, str]:
  """One image and its sampled caption -> ([size, size, C] uint8, caption rewritten to match).

  `image` is a [H, W, C] array or an RGB PIL image; a PIL image is cropped, resized and turned
  without leaving PIL (one copy less, the fast path for JPEG / PNG). `box` is a crop already
  drawn (decode.open_rgb_cropped draws it before decoding); None draws one here."""
  pil = isinstance(image, Image.Image)
  width, height = image.size if pil else (image.shape[1], image.shape[0])
  if box is None and config.crop_scale[0] < 1.0:
    box = random_box(height, width, rng, config.crop_scale)
  elif box is None:
    box = (0, 0, width, height)
  if pil:
    image = image.resize((size, size), Image.BILINEAR, box=box)
  elif tuple(box) != (0, 0, size, size) or (height, width) != (size, size):
    image = resize_box(image, tuple(int(round(v)) for v in box), size)
  if config.dihedral:
    transform = random_dihedral(rng)
    rewritten = rewrite_caption(caption, transform)
    if rewritten is not None:
      image = transform.apply_pil(image) if pil else transform.apply_image(image)
      caption = rewritten
  if pil:
    image = np.asarray(image)
  if config.color_jitter > 0:
    image = color_jitter(image, rng, config.color_jitter)
  return image, caption
