"""EXIF orientation (phone and drone exports store rotated pixels plus a tag) is applied by every
decode path, so such an image trains, indexes and evaluates upright."""

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from rsjax.data import decode, records

ORIENTATION = 0x0112


def _scene() -> np.ndarray:
  """A 48x32 (W x H) image whose quadrants differ, so any rotation or flip shows."""
  rng = np.random.default_rng(0)
  a = np.zeros((32, 48, 3), np.uint8)
  a[:16, :24] = (250, 0, 0)
  a[:16, 24:] = (0, 250, 0)
  a[16:, :24] = (0, 0, 250)
  a[16:, 24:] = (250, 250, 0)
  return np.clip(a.astype(int) + rng.integers(-3, 4, a.shape), 0, 255).astype(np.uint8)


def _stored(upright: np.ndarray, orientation: int, fmt: str) -> bytes:
  """Bytes whose raw pixels, once the EXIF orientation is applied, show `upright`."""
  raw = Image.fromarray(upright)
  # exif_transpose's inverse: orientation o's stored pixels are upright put through inverse(o)
  inverse = {1: None, 2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM,
             5: Image.TRANSPOSE, 6: Image.ROTATE_90, 7: Image.TRANSVERSE, 8: Image.ROTATE_270}
  if inverse[orientation] is not None:
    raw = raw.transpose(inverse[orientation])
  exif = Image.Exif()
  exif[ORIENTATION] = orientation
  out = io.BytesIO()
  raw.save(out, fmt, exif=exif, **({"quality": 98} if fmt == "JPEG" else {}))
  data = out.getvalue()
  with Image.open(io.BytesIO(data)) as check:  # the fixture itself is right
    assert _close(np.asarray(ImageOps.exif_transpose(check)), upright, fmt)
  return data


def _close(got: np.ndarray, want: np.ndarray, fmt: str) -> bool:
  """Equal for PNG; for JPEG a small mean error (compression blurs the quadrant edges), far below
  the ~100 levels that a wrong turn or flip of the quadrants gives."""
  if got.shape != want.shape:
    return False
  diff = np.abs(got.astype(int) - want.astype(int))
  return diff.max() == 0 if fmt == "PNG" else diff.mean() < 8


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_decode_path_applies_the_orientation(orientation, fmt):
  upright = _scene()
  data = _stored(upright, orientation, fmt)
  assert _close(decode.decode(data, "x"), upright, fmt)

  small = decode.decode_resized(data, 16, "x")  # JPEG: the draft path
  want = np.asarray(Image.fromarray(upright).resize((16, 16), Image.BILINEAR))
  assert _close(small, want, "JPEG")  # resizing filters differ slightly between the paths

  image = decode.open_rgb(data, "x")
  assert image.size == (48, 32) and _close(np.asarray(image), upright, fmt)

  # The crop path may decode a JPEG at reduced scale (draft); the box is in the decoded pixels.
  image, box = decode.open_rgb_cropped(data, 16, np.random.default_rng(1), (1.0, 1.0), "x")
  assert box == (0, 0, *image.size) and image.size[0] * 2 == image.size[1] * 3  # upright 3:2
  image, box = decode.open_rgb_cropped(data, 8, np.random.default_rng(2), (0.3, 0.6), "x")
  w, h = image.size
  assert w * 2 == h * 3 and 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
  shown = np.asarray(Image.fromarray(upright).resize((w, h), Image.BILINEAR)) if w != 48 else upright
  cut = tuple(int(round(v)) for v in box)
  assert _close(np.asarray(image.crop(cut)), shown[cut[1]:cut[3], cut[0]:cut[2]],
                fmt if w == 48 else "JPEG")


def test_undecodable_bytes_are_named_without_an_object_address():
  with pytest.raises(records.CorruptImageError) as err:
    decode.decode(b"not an image at all", "archive/a.jpg")
  message = str(err.value)
  assert message.startswith("archive/a.jpg: cannot decode image")
  assert "BytesIO" not in message and "0x" not in message
