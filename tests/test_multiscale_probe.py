"""The small-object probe (benchmarks/multiscale_probe.py) and the locality of the pyramid's pixel
laterals, on a synthetic image whose only object is a 3x3 spot."""

import jax
import jax.numpy as jnp
import numpy as np

import helpers  # noqa: F401  (the repository first on sys.path: its rsjax and benchmarks)
from benchmarks.multiscale_probe import relative_difference, stages
from rsjax.models.pyramid import PixelLaterals
from test_models import _init, _small


def _lone_object(seed=0):
  """(background [1, 32, 32, 3], the same with a bright 3x3 object at (y, x), (y, x))."""
  rng = np.random.default_rng(seed)
  background = rng.uniform(-0.5, 0.5, (1, 32, 32, 3)).astype(np.float32)
  y, x = 5, 22
  with_object = background.copy()
  with_object[0, y:y + 3, x:x + 3] = 1.0
  return jnp.asarray(background), jnp.asarray(with_object), (y, x)


def test_the_probe_sees_the_object_at_every_stage_and_nothing_without_it():
  config = _small(stem="conv")
  config.image.pyramid.update(enabled=True, taps=(1, 3), strides=(4, 8), channels=16,
                              lateral="pixels")
  model, params = _init(config)
  params["image"]["pyramid"]["gate"] = jnp.float32(1.0)
  background, with_object, _ = _lone_object()
  base = stages(model, params, background)
  assert set(base) == {"stem_s2", "stem_s4", "stem_s8", "tokens_s8", "pyramid_s4", "pyramid_s8",
                       "embedding"}
  again = stages(model, params, background)
  assert all(relative_difference(base[k], again[k]) == 0.0 for k in base)
  seen = stages(model, params, with_object)
  for name in base:
    assert relative_difference(seen[name], base[name]) > 1e-4, name
  want = np.linalg.norm(with_object - background) / np.linalg.norm(with_object)
  assert np.isclose(relative_difference(with_object, background), want)


def test_a_pixel_lateral_sees_the_object_only_near_it():
  """The stride-4 lateral of a spot at (5, 22): its receptive field is 7 px, so the map moves
  at the cells around the spot and not at all three or more cells away."""
  laterals = PixelLaterals(strides=(4, 8), channels=16)
  background, with_object, (y, x) = _lone_object()
  params = laterals.init(jax.random.key(0), background)
  moved = np.abs(np.asarray(laterals.apply(params, with_object)[4] -
                            laterals.apply(params, background)[4]))[0].sum(-1)   # [8, 8]
  assert moved.shape == (8, 8) and moved[y // 4, x // 4] > 0
  rows, cols = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
  far = (np.abs(rows - y // 4) >= 3) | (np.abs(cols - x // 4) >= 3)
  assert far.any() and np.all(moved[far] == 0)
