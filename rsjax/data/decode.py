"""Image decoding: JPEG, PNG, TIFF (8/16-bit, multi-band GeoTIFF) -> numpy [H, W, C].

PIL decodes JPEG and PNG; tifffile decodes TIFF, which keeps 16-bit samples and any number of bands
(PIL cannot). Grayscale becomes 3 channels; an alpha band (PNG RGBA, TIFF extra sample marked
alpha) is dropped. `bands` picks channels
(e.g. (3, 2, 1) for Sentinel-2 RGB); `bands=None` keeps RGB for 3/4-band images and every band of
multispectral ones. Errors name the file.

For speed, `decode_resized` lets JPEG decode at reduced scale (PIL draft mode: the DCT itself
shrinks by 1/2, 1/4 or 1/8), never below the requested size.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from rsjax.data.records import CorruptImageError, MissingImageError, PairSizeError

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _is_tiff(data: bytes) -> bool:
  return data[:4] in _TIFF_MAGIC


def read_bytes(path: str) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    raise MissingImageError(f"image file not found: {path}") from None


def _channels_last(array: np.ndarray, name: str) -> np.ndarray:
  """tifffile gives [H, W], [H, W, C] or planar [C, H, W]; returns [H, W, C]."""
  if array.ndim == 2:
    return array[:, :, None]
  if array.ndim == 3:
    if array.shape[0] < array.shape[2] and array.shape[0] <= 32:  # planar configuration
      return np.moveaxis(array, 0, -1)
    return array
  raise CorruptImageError(f"{name}: unexpected TIFF array shape {array.shape}")


def _select_bands(array: np.ndarray, bands: Sequence[int] | None, name: str,
                  has_alpha: bool) -> np.ndarray:
  """[H, W, C] -> the chosen bands; grayscale -> 3 channels; an alpha band dropped."""
  channels = array.shape[-1]
  if bands is not None:
    bad = [b for b in bands if not 0 <= b < channels]
    if bad:
      raise CorruptImageError(f"{name}: bands {bad} requested but the image has {channels} bands")
    return array[:, :, list(bands)]
  if channels == 1:
    return np.repeat(array, 3, axis=-1)
  if has_alpha and channels in (2, 4):  # gray+alpha or RGB+alpha
    return np.repeat(array[:, :, :1], 3, axis=-1) if channels == 2 else array[:, :, :3]
  return array


def _read_tiff(data: bytes, name: str) -> tuple[np.ndarray, bool]:
  """-> ([H, W, C], whether the last band is alpha). A 4-band GeoTIFF is RGB+NIR unless its
  extra sample is marked as alpha."""
  import tifffile
  with tifffile.TiffFile(io.BytesIO(data)) as tif:
    page = tif.pages[0]
    photometric = int(page.photometric)
    if (photometric in _PIL_PHOTOMETRIC and page.bitspersample <= 8
        and (photometric != 5 or page.samplesperpixel == 4)):  # SEPARATED: CMYK inks only
      return _pil_tiff(data), False
    array = _channels_last(page.asarray(), name)
    alpha = any(int(e) in (1, 2) for e in (page.extrasamples or ()))  # (un)associated alpha
  return array, alpha


# TIFF colour models whose stored samples are not the colours (palette indices, inverted gray,
# CMYK ink, YCbCr, CIELAB): PIL converts these to RGB. tifffile reads the rest (multi-band,
# 16-bit, float), where the samples are the measurements.
_PIL_PHOTOMETRIC = (0, 3, 5, 6, 8)  # MINISWHITE, PALETTE, SEPARATED, YCBCR, CIELAB


def _pil_tiff(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(image.convert("RGB"))


ORIENTATION_TAG = 0x0112  # EXIF: how the stored pixels must be turned to show the scene upright


def _orientation(image: Image.Image) -> int:
  try:
    return int(image.getexif().get(ORIENTATION_TAG, 1))
  except Exception:  # a malformed EXIF block does not make the pixels unreadable
    return 1


def _upright(image: Image.Image, orientation: int) -> Image.Image:
  """The loaded image turned as its EXIF orientation says (phone and drone exports store rotated
  pixels plus the tag); images without the tag are returned as they are."""
  return ImageOps.exif_transpose(image) if orientation not in (0, 1) else image


def _decode_error(name: str, e: Exception) -> CorruptImageError:
  """One message for undecodable bytes; PIL's own names a BytesIO object instead of the file."""
  detail = str(e)
  if isinstance(e, UnidentifiedImageError) or "BytesIO" in detail:
    detail = "not an image format PIL or tifffile can read"
  return CorruptImageError(f"{name}: cannot decode image ({type(e).__name__}: {detail})")


def _pil_array(image: Image.Image) -> np.ndarray:
  if image.mode in ("I;16", "I;16B", "I;16L"):
    return np.asarray(image, np.uint16)
  if image.mode not in ("L", "RGB", "RGBA", "LA", "I", "F"):
    image = image.convert("RGB")
  return np.asarray(image)


def decode(data: bytes, name: str = "<bytes>", bands: Sequence[int] | None = None) -> np.ndarray:
  """Encoded image bytes -> [H, W, C] array in the file's own dtype (uint8, uint16, ...)."""
  try:
    if _is_tiff(data):
      array, alpha = _read_tiff(data, name)
    else:
      with Image.open(io.BytesIO(data)) as image:
        image.load()
        image = _upright(image, _orientation(image))
        alpha = image.mode in ("RGBA", "LA")
        array = _pil_array(image)
      array = array[:, :, None] if array.ndim == 2 else array
  except CorruptImageError:
    raise
  except Exception as e:  # PIL / tifffile raise many kinds on truncated or foreign data
    raise _decode_error(name, e) from None
  return _select_bands(array, bands, name, alpha)


def decode_file(path: str, bands: Sequence[int] | None = None) -> np.ndarray:
  return decode(read_bytes(path), path, bands)


def to_uint8(array: np.ndarray, max_value: float | None = None) -> np.ndarray:
  """Scales to uint8: uint8 stays; other dtypes map [0, max_value] -> [0, 255].

  `max_value` is the data set's white level (e.g. 4095 for 12-bit sensors, 10000 for Sentinel-2
  reflectance); by default the dtype's maximum, or 1.0 for floats."""
  if array.dtype == np.uint8:
    return array
  if max_value is None:
    max_value = float(np.iinfo(array.dtype).max) if np.issubdtype(array.dtype, np.integer) else 1.0
  scaled = array.astype(np.float32) * (255.0 / max_value)
  return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def resize(array: np.ndarray, size: int) -> np.ndarray:
  """[H, W, C] uint8 -> [size, size, C] with bilinear filtering (PIL, per band if C != 3)."""
  if array.shape[0] == size and array.shape[1] == size:
    return array
  if array.shape[-1] == 3:
    return np.asarray(Image.fromarray(array).resize((size, size), Image.BILINEAR))
  planes = [np.asarray(Image.fromarray(array[:, :, c]).resize((size, size), Image.BILINEAR))
            for c in range(array.shape[-1])]
  return np.stack(planes, axis=-1)


def decode_resized(data: bytes, size: int, name: str = "<bytes>",
                   bands: Sequence[int] | None = None, max_value: float | None = None) -> np.ndarray:
  """Encoded bytes -> [size, size, C] uint8. JPEGs decode at reduced scale when that still
  leaves at least `size` pixels per side (draft mode), which is several times faster."""
  if data[:2] == b"\xff\xd8" and bands is None:
    try:
      with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (size, size))
        image = _upright(image.convert("RGB"), _orientation(image))
        return np.asarray(image.resize((size, size), Image.BILINEAR))
    except Exception as e:
      raise _decode_error(name, e) from None
  return resize(to_uint8(decode(data, name, bands), max_value), size)


def decode_pair(paths: Sequence[str], size: int) -> np.ndarray:
  """The (before, after) files of a pair -> [2, size, size, 3] uint8. Their sizes are compared as
  decoded, before resizing: dates of different sizes are not the same ground (PairSizeError)."""
  dates = [decode(read_bytes(p), p) for p in paths]
  for p, d in zip(paths, dates):
    if d.shape[-1] != 3:
      raise CorruptImageError(f"{p}: {d.shape[-1]} bands, expected RGB")
  (h0, w0), (h1, w1) = (d.shape[:2] for d in dates)
  if (h0, w0) != (h1, w1):
    raise PairSizeError(f"the dates differ in size: before {w0}x{h0}, after {w1}x{h1} px "
                        f"({paths[0]}, {paths[1]})")
  return np.stack([resize(to_uint8(d), size) for d in dates])


def open_rgb(data: bytes, name: str = "<bytes>", draft_size: int = 0) -> Image.Image | None:
  """A decoded RGB PIL image for JPEG / PNG / ... bytes; None for TIFF (decoded by `decode`).

  draft_size > 0 lets a JPEG decode at reduced scale, never below draft_size per side."""
  if _is_tiff(data):
    return None
  try:
    image = Image.open(io.BytesIO(data))
    if draft_size:
      image.draft("RGB", (draft_size, draft_size))
    image.load()
    image = _upright(image, _orientation(image))
    return image.convert("RGB") if image.mode != "RGB" else image
  except Exception as e:
    raise _decode_error(name, e) from None


def open_rgb_cropped(data: bytes, size: int, rng: np.random.Generator,
                     crop_scale: tuple[float, float], name: str = "<bytes>"):
  """(RGB PIL image, crop box in its pixels) for JPEG / PNG / ...; (None, None) for TIFF.

  The random crop box (augment.random_box) is drawn from the header's size before decoding, so a
  JPEG decodes at the smallest DCT scale (1, 1/2, 1/4, 1/8) that still leaves the crop at least
  `size` pixels per side. Without a crop (crop_scale[0] >= 1) the box is the whole image."""
  from rsjax.data.augment import random_box

  if _is_tiff(data):
    return None, None
  try:
    image = Image.open(io.BytesIO(data))
    orientation = _orientation(image)
    turned = orientation in (5, 6, 7, 8)  # a quarter turn: the upright image is H x W
    width, height = image.size[::-1] if turned else image.size  # upright, as the box is drawn
    if crop_scale[0] < 1.0:
      box = random_box(height, width, rng, crop_scale)
    else:
      box = (0, 0, width, height)
    need = (-(-width * size // (box[2] - box[0])), -(-height * size // (box[3] - box[1])))
    image.draft("RGB", need[::-1] if turned else need)  # JPEG only; other formats ignore it
    image.load()
    image = _upright(image, orientation)
    if image.mode != "RGB":
      image = image.convert("RGB")
  except Exception as e:
    raise _decode_error(name, e) from None
  sx, sy = image.size[0] / width, image.size[1] / height
  if (sx, sy) != (1.0, 1.0):
    box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
  return image, box


@dataclasses.dataclass(frozen=True)
class Normalization:
  """Per-data-set, per-channel mean and std of uint8 pixel values, used as (x - mean) / std."""
  mean: tuple[float, ...]
  std: tuple[float, ...]

  def apply(self, images: np.ndarray) -> np.ndarray:
    """uint8 [..., C] -> float32 [..., C]."""
    mean = np.asarray(self.mean, np.float32)
    std = np.asarray(self.std, np.float32)
    return (images.astype(np.float32) - mean) / std


def channel_stats(images) -> Normalization:
  """Mean and std per channel over an iterable of uint8 [H, W, C] images."""
  total = total_sq = None
  count = 0
  for image in images:
    x = image.reshape(-1, image.shape[-1]).astype(np.float64)
    total = x.sum(0) if total is None else total + x.sum(0)
    total_sq = (x * x).sum(0) if total_sq is None else total_sq + (x * x).sum(0)
    count += x.shape[0]
  if not count:
    raise ValueError("channel_stats: no images")
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean * mean, 1e-12))
  return Normalization(tuple(float(v) for v in mean), tuple(float(v) for v in std))
