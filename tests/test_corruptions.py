"""rsjax/data/corruptions.py: the robustness suite's shifts, checked image by image."""

import ml_collections
import numpy as np
import pytest
from scipy import ndimage

from rsjax.data import corruptions as C
from rsjax.errors import ConfigError, InputError


def _textured(n=4, height=64, width=64, seed=0) -> np.ndarray:
  """[n, H, W, 3] uint8 with texture at every scale and no grid that a down-sampling factor
  could line up with (an aligned checkerboard survives factors 2 and 4 unharmed)."""
  rng = np.random.default_rng(seed)
  smooth = ndimage.gaussian_filter(rng.normal(128, 60, (n, height, width, 3)), (0, 1.2, 1.2, 0))
  return np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)


def _distance(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.abs(a.astype(np.float64) - b).mean())


def _high_frequency(images: np.ndarray) -> float:
  """Mean |Laplacian| of the grey images: what blur, compression and a coarser GSD remove."""
  grey = images.astype(np.float64).mean(-1)
  return float(np.mean([np.abs(ndimage.laplace(g)).mean() for g in grey]))


@pytest.mark.parametrize("name", C.NAMES)
def test_each_corruption_is_seeded_keeps_shape_and_dtype_and_severity_0_is_the_identity(name):
  images = _textured(n=2, height=48, width=80)  # not square: height and width stay apart
  assert C.corrupt_images(images, name, 0, seed=1) is images
  a = C.corrupt_images(images, name, 3, seed=1)
  assert a.shape == images.shape and a.dtype == np.uint8
  assert not np.array_equal(a, images)
  np.testing.assert_array_equal(a, C.corrupt_images(images, name, 3, seed=1))
  # Image i's pattern is its own: corrupting it alone gives the same pixels.
  np.testing.assert_array_equal(a[:1], C.corrupt_images(images[:1], name, 3, seed=1))
  if name not in ("brightness_contrast", "jpeg", "downsample", "defocus_blur"):  # deterministic
    assert not np.array_equal(a, C.corrupt_images(images, name, 3, seed=2))


@pytest.mark.parametrize("name", C.NAMES)
def test_severities_are_ordered(name):
  images = _textured()
  steps = [C.corrupt_images(images, name, s, seed=0) for s in range(6)]
  distances = [_distance(x, images) for x in steps]
  assert all(b > a for a, b in zip(distances, distances[1:])), distances
  if name in ("defocus_blur", "motion_blur", "jpeg", "downsample"):
    detail = [_high_frequency(x) for x in steps]
    assert all(b < a for a, b in zip(detail, detail[1:])), detail


def test_bad_inputs_are_refused_in_one_line():
  image = _textured(n=1)[0]
  with pytest.raises(InputError, match="unknown corruption.*fog.*valid: haze"):
    C.corrupt(image, "fog", 1, np.random.default_rng(0))
  with pytest.raises(InputError, match="severity must be 0..5, got 6"):
    C.corrupt(image, "haze", 6, np.random.default_rng(0))
  with pytest.raises(InputError, match="uint8 RGB"):
    C.corrupt(image.astype(np.float32), "haze", 1, np.random.default_rng(0))
  with pytest.raises(InputError, match="uint8 RGB"):
    C.corrupt(np.zeros((8, 8, 4), np.uint8), "haze", 1, np.random.default_rng(0))
  with pytest.raises(InputError, match=r"\[N, H, W, 3\]"):
    C.corrupt_images(image, "haze", 1, seed=0)
  assert C.corrupt_images(np.zeros((0, 8, 8, 3), np.uint8), "cloud", 2, seed=0).shape == (0, 8, 8, 3)


def _data(**corruptions) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"bands": (), "corruptions": corruptions})


def test_the_training_option_is_off_by_default_and_checked_by_key():
  assert C.from_config(ml_collections.ConfigDict({})) is None
  assert C.from_config(_data(probability=0.0, max_severity=3)) is None
  train = C.from_config(_data(probability=0.5, max_severity=3, names=("haze", "jpeg")))
  assert train == C.TrainCorruptions(0.5, 3, ("haze", "jpeg"))
  with pytest.raises(ConfigError, match="'data.corruptions.probability'"):
    C.from_config(_data(probability=1.5, max_severity=3))
  with pytest.raises(ConfigError, match="'data.corruptions.max_severity'"):
    C.from_config(_data(probability=0.5, max_severity=0))
  with pytest.raises(ConfigError, match="'data.corruptions.names'.*snow"):
    C.from_config(_data(probability=0.5, max_severity=3, names=("snow",)))
  four_bands = _data(probability=0.5, max_severity=3)
  four_bands.bands = (0, 1, 2, 3)
  with pytest.raises(ConfigError, match="RGB images.*4 bands"):
    C.from_config(four_bands)


def test_the_training_option_corrupts_about_its_share_from_the_record_generator():
  images = _textured(n=40)
  train = C.TrainCorruptions(probability=0.5, max_severity=2)
  first = [train.apply(x, np.random.default_rng([7, i])) for i, x in enumerate(images)]
  again = [train.apply(x, np.random.default_rng([7, i])) for i, x in enumerate(images)]
  changed = [not np.array_equal(a, x) for a, x in zip(first, images)]
  assert 10 <= sum(changed) <= 30, sum(changed)
  assert all(np.array_equal(a, b) for a, b in zip(first, again))
  always = C.TrainCorruptions(probability=1.0, max_severity=1, names=("cloud",))
  assert all(not np.array_equal(always.apply(x, np.random.default_rng(i)), x)
             for i, x in enumerate(images[:5]))


def _first_batches(iterator, n=3):
  return [next(iterator) for _ in range(n)]


def test_the_in_memory_train_pipeline_corrupts_only_when_asked_and_is_seeded():
  from rsjax.data import pipeline

  images = _textured(n=12, height=16, width=16)
  tokens = np.arange(1, 13, dtype=np.int32).reshape(12, 1, 1)  # token = 1 + image index
  plain = _first_batches(pipeline.train_iterator(images, tokens, 4, seed=0))
  off = _first_batches(pipeline.train_iterator(images, tokens, 4, seed=0, corruptions=None))
  for a, b in zip(plain, off):
    np.testing.assert_array_equal(a["image"], b["image"])
  always = C.TrainCorruptions(probability=1.0, max_severity=2)
  on = _first_batches(pipeline.train_iterator(images, tokens, 4, seed=0, corruptions=always))
  again = _first_batches(pipeline.train_iterator(images, tokens, 4, seed=0, corruptions=always))
  for clean, shifted, repeat in zip(plain, on, again):
    np.testing.assert_array_equal(clean["tokens"], shifted["tokens"])  # the same records
    np.testing.assert_array_equal(shifted["image"], repeat["image"])
    for image, token in zip(shifted["image"], shifted["tokens"][:, 0]):
      assert not np.array_equal(image, images[token - 1])


def test_data_corruptions_reaches_the_train_loop_from_the_config(tmp_path):
  from helpers import tiny_config
  from rsjax.train.loop import open_input

  _, clean = open_input(tiny_config(), str(tmp_path))
  _, robust = open_input(tiny_config("data.corruptions.probability=1.0",
                                     "data.corruptions.names=('cloud',)"), str(tmp_path))
  a, b = next(clean), next(robust)
  np.testing.assert_array_equal(a["tokens"], b["tokens"])
  assert a["image"].shape == b["image"].shape
  changed = [not np.array_equal(x, y) for x, y in zip(a["image"], b["image"])]
  assert all(changed)
  with pytest.raises(ConfigError, match="'data.corruptions.probability'"):
    open_input(tiny_config("data.corruptions.probability=2.0"), str(tmp_path))


def test_the_streamed_train_pipeline_corrupts_after_decoding_and_resizing():
  import io

  from PIL import Image

  from rsjax.data import augment, stream

  buffer = io.BytesIO()
  Image.fromarray(_textured(n=1, height=32, width=32)[0]).save(buffer, format="PNG")
  record = {"key": "tile_7", "image": buffer.getvalue(), "captions": ["two ships"], "label": ""}
  still = augment.AugmentConfig(crop_scale=(1.0, 1.0), dihedral=False)
  spec = stream.StreamSpec(image_size=16, context_length=8, tokenizer_path="", augment=still)
  robust = stream.StreamSpec(image_size=16, context_length=8, tokenizer_path="", augment=still,
                             corruptions=C.TrainCorruptions(1.0, 2, ("haze",)))
  clean = stream.DecodeAugment(spec).random_map(record, np.random.default_rng(3))["image"]
  hazy = stream.DecodeAugment(robust).random_map(record, np.random.default_rng(3))["image"]
  again = stream.DecodeAugment(robust).random_map(record, np.random.default_rng(3))["image"]
  assert clean.shape == hazy.shape == (16, 16, 3)
  np.testing.assert_array_equal(hazy, again)
  assert hazy.astype(float).mean() > clean.astype(float).mean()  # haze adds bright airlight
