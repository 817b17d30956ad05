"""Decoding (JPEG, PNG, 8/16-bit and multi-band TIFF) and the caption-aware RS augmentations.

The multi-band, 16-bit, grayscale and corrupt files are written here (no such files exist in
../shared/data); the real UCM / Sydney TIFFs are read in test_pipeline_tfds.py."""

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from rsjax.data import augment, decode, records


def _tiff_bytes(array, **kw) -> bytes:
  buf = io.BytesIO()
  tifffile.imwrite(buf, array, **kw)
  return buf.getvalue()


def test_16bit_multiband_geotiff_keeps_all_bands_or_chosen_ones():
  rng = np.random.default_rng(0)
  bands = rng.integers(0, 4096, size=(12, 10, 6), dtype=np.uint16)  # 12-bit, 6 bands
  data = _tiff_bytes(bands, photometric="minisblack", planarconfig="contig")
  full = decode.decode(data, "s2.tif")
  assert full.dtype == np.uint16 and full.shape == (12, 10, 6)
  np.testing.assert_array_equal(full, bands)
  rgb = decode.decode(data, "s2.tif", bands=(3, 2, 1))
  np.testing.assert_array_equal(rgb, bands[:, :, [3, 2, 1]])
  small = decode.decode_resized(data, 8, "s2.tif", bands=(3, 2, 1), max_value=4095)
  assert small.shape == (8, 8, 3) and small.dtype == np.uint8
  scaled = decode.to_uint8(bands[:, :, :1], max_value=4095)
  np.testing.assert_array_equal(scaled[..., 0], np.clip(np.round(bands[..., 0] * (255 / 4095)), 0, 255))
  with pytest.raises(records.CorruptImageError, match=r"s2.tif: bands \[7\]"):
    decode.decode(data, "s2.tif", bands=(7,))


def test_planar_tiff_alpha_and_grayscale_to_three_channels():
  planar = np.arange(4 * 5 * 7, dtype=np.uint16).reshape(4, 5, 7)  # [C, H, W]
  out = decode.decode(_tiff_bytes(planar, photometric="minisblack", planarconfig="separate"))
  assert out.shape == (5, 7, 4)
  np.testing.assert_array_equal(out[..., 2], planar[2])
  rgba = np.random.default_rng(0).integers(0, 255, (5, 5, 4), dtype=np.uint8)
  rgb = decode.decode(_tiff_bytes(rgba, photometric="rgb", extrasamples=["unassalpha"]))
  np.testing.assert_array_equal(rgb, rgba[..., :3])  # alpha dropped; a plain 4th band is kept
  gray = (np.arange(36, dtype=np.uint8).reshape(6, 6) * 7)
  buf = io.BytesIO()
  Image.fromarray(gray).save(buf, format="PNG")
  rgb = decode.decode(buf.getvalue(), "g.png")
  assert rgb.shape == (6, 6, 3)
  for c in range(3):
    np.testing.assert_array_equal(rgb[..., c], gray)


def test_truncated_and_foreign_bytes_raise_corrupt_image_error(shared_data):
  path = shared_data / "rsicd_samples" / "RSICD_images" / "00001.jpg"
  data = path.read_bytes()
  assert decode.decode(data).shape == (224, 224, 3)
  with pytest.raises(records.CorruptImageError, match="cut.jpg: cannot decode"):
    decode.decode(data[: len(data) // 2], "cut.jpg")
  with pytest.raises(records.CorruptImageError, match="notes.png"):
    decode.decode(b"plain text, not an image", "notes.png")


def test_jpeg_draft_decode_matches_full_decode(shared_data):
  """Draft mode (reduced-scale DCT) gives nearly the same 224 px image as a full decode +
  resize: mean absolute difference under 3 grey levels."""
  path = shared_data / "rsscn7" / "images" / "aGrass" / "a001.jpg"
  data = path.read_bytes()
  fast = decode.decode_resized(data, 100, str(path)).astype(np.float32)
  full = decode.resize(decode.decode(data), 100).astype(np.float32)
  assert fast.shape == full.shape == (100, 100, 3)
  assert np.abs(fast - full).mean() < 3.0


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("turns", [0, 1, 2, 3])
def test_flips_and_rotations_move_position_words_with_the_pixels(flip, turns):
  """A white block in the upper-left corner; after each of the 8 symmetries the rewritten
  caption names the corner where the block really is."""
  image = np.zeros((8, 8, 3), np.uint8)
  image[:3, :3] = 255
  t = augment.Dihedral(flip, turns)
  moved = t.apply_image(image)
  np.testing.assert_array_equal(np.asarray(t.apply_pil(Image.fromarray(image))), moved)
  rows, cols = np.nonzero(moved[..., 0])
  where = ("upper" if rows.mean() < 4 else "lower") + " " + ("left" if cols.mean() < 4 else "right")
  caption = augment.rewrite_caption("A white roof in the upper left corner", t)
  assert caption == f"A white roof in the {where} corner"
  compass = augment.rewrite_caption("the lake lies north-west of the town", t)
  expected = {"upper left": "north-west", "upper right": "north-east",
              "lower left": "south-west", "lower right": "south-east"}[where]
  assert compass == f"the lake lies {expected} of the town"


def test_rewrite_details_axes_case_and_unsafe_words():
  quarter = augment.Dihedral(False, 1)
  assert augment.rewrite_caption("A vertical road on the Left", quarter) == \
      "A horizontal road on the Bottom"
  assert augment.rewrite_caption("leftover bright spots", quarter) == "leftover bright spots"
  # "above" may mean higher ground or further north: the pair is left unflipped instead.
  assert augment.rewrite_caption("a bridge above the river", augment.Dihedral(True, 0)) is None
  rng = np.random.default_rng(0)
  image = np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8)
  cfg = augment.AugmentConfig(crop_scale=(1.0, 1.0), dihedral=True)
  for _ in range(10):  # never transformed, whatever the draw
    out, cap = augment.augment_pair(image, "a bridge above the river", 16, rng, cfg)
    np.testing.assert_array_equal(out, image)
    assert cap == "a bridge above the river"


def test_random_resized_crop_and_color_jitter_shapes_and_ranges():
  rng = np.random.default_rng(0)
  image = np.random.default_rng(1).integers(0, 255, (40, 30, 3), dtype=np.uint8)
  crops = [augment.random_resized_crop(image, 16, rng) for _ in range(5)]
  assert all(c.shape == (16, 16, 3) and c.dtype == np.uint8 for c in crops)
  assert len({c.tobytes() for c in crops}) == 5  # different crops
  jittered = augment.color_jitter(image, rng, 0.3)
  assert jittered.shape == image.shape and jittered.dtype == np.uint8
  assert not np.array_equal(jittered, image)
  multiband = np.random.default_rng(2).integers(0, 255, (20, 20, 5), dtype=np.uint8)
  assert augment.random_resized_crop(multiband, 8, rng).shape == (8, 8, 5)


def test_crop_drawn_before_decoding_uses_jpeg_draft_and_matches_full_decode(shared_data):
  """A 400 px JPEG cropped to 64 px: the box is drawn from the header, the JPEG decodes at a
  reduced DCT scale (at least 64 px left across the crop), and the result is close to a crop
  of the full-resolution decode with the same box (mean difference under 4 grey levels)."""
  data = (shared_data / "rsscn7" / "images" / "bField" / "b001.jpg").read_bytes()
  image, box = decode.open_rgb_cropped(data, 64, np.random.default_rng(7), (0.5, 1.0))
  assert image.size[0] < 400 and box[2] - box[0] >= 64 and box[3] - box[1] >= 64
  fast = np.asarray(image.resize((64, 64), Image.BILINEAR, box=box)).astype(np.float32)
  full_box = augment.random_box(400, 400, np.random.default_rng(7), (0.5, 1.0))
  full = augment.resize_box(decode.decode(data), full_box, 64).astype(np.float32)
  assert np.abs(fast - full).mean() < 4.0
  assert decode.open_rgb_cropped(_tiff_bytes(np.zeros((4, 4), np.uint8)), 8,
                                 np.random.default_rng(0), (0.5, 1.0)) == (None, None)
