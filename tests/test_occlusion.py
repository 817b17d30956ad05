"""Occlusion heat maps (rsjax/evaluation/occlusion.py): windows, hiding, painting against a NumPy
reference; on a change encoder, zero wherever nothing changed; on a trained model, the map of a
lone object's class peaks on that object."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from helpers import tiny_config
from rsjax.evaluation import occlusion
from rsjax.pixels import normalize_images


def test_windows_cover_the_image_with_the_last_flush():
  assert occlusion.window_starts(64, 8, 4)[-1] == 56
  assert occlusion.window_starts(10, 4, 4) == [0, 4, 6]
  assert occlusion.window_starts(8, 8, 3) == [0]
  assert len(occlusion.windows(32, 32, 8, 8)) == 16
  for window, stride in ((0, 4), (40, 4), (8, 0)):
    with pytest.raises(ValueError, match="window"):
      occlusion.window_starts(32, window, stride)


def test_hidden_copies_fill_with_the_median_or_the_first_date():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
  copies = occlusion.hidden_copies(image, [(0, 0), (4, 4)], 4)
  median = np.median(image.reshape(-1, 3), 0).astype(np.uint8)
  assert copies.shape == (2, 8, 8, 3) and copies.dtype == np.uint8
  assert (copies[0, :4, :4] == median).all() and (copies[0, 4:] == image[4:]).all()
  assert (copies[1, 4:, 4:] == median).all() and (copies[1, :4] == image[:4]).all()
  dates = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
  hidden = occlusion.hidden_copies(dates, [(2, 2)], 4)[0]
  for t in range(3):  # every date takes date 0's pixels in the window, and keeps its own outside
    assert (hidden[t, 2:6, 2:6] == dates[0, 2:6, 2:6]).all()
    assert (hidden[t, :2] == dates[t, :2]).all()


def test_maps_equal_a_numpy_reference():
  rng = np.random.default_rng(1)
  weights = rng.normal(size=(6 * 6 * 3, 4)).astype(np.float32)
  encode = lambda x: np.asarray(x, np.float32).reshape(len(x), -1) @ weights  # a linear "model"
  image = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
  queries = rng.normal(size=(2, 4)).astype(np.float32)
  maps, scores = occlusion.occlusion_maps(encode, image, queries, window=4, stride=2)

  def cos(x, q):
    e = encode(x[None])[0]
    return e @ q / np.linalg.norm(e) / np.linalg.norm(q)

  median = np.median(image.reshape(-1, 3), 0).astype(np.uint8)
  want = np.zeros((2, 6, 6))
  count = np.zeros((6, 6))
  for y in (0, 2):
    for x in (0, 2):
      hidden = image.copy()
      hidden[y: y + 4, x: x + 4] = median
      for qi in range(2):
        want[qi, y: y + 4, x: x + 4] += cos(image, queries[qi]) - cos(hidden, queries[qi])
      count[y: y + 4, x: x + 4] += 1
  np.testing.assert_allclose(maps, want / count, atol=1e-5)
  np.testing.assert_allclose(scores, [cos(image, q) for q in queries], atol=1e-5)
  assert maps.shape == (2, 6, 6) and maps.dtype == np.float32


def test_change_map_is_zero_where_nothing_changed():
  from rsjax.models.temporal import ChangeTwoTower, default_temporal_config

  cfg = ml_collections.ConfigDict(tiny_config().model.to_dict())
  cfg.temporal = default_temporal_config()
  model = ChangeTwoTower(cfg)
  rng = np.random.default_rng(2)
  before = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  after = before.copy()
  after[16:24, 8:16] = 255 - after[16:24, 8:16]           # a change in one 8 x 8 cell only
  pair = np.stack([before, after])
  params = model.init(jax.random.key(0), jnp.zeros((1, 2, 32, 32, 3)),
                      jnp.zeros((1, 24), jnp.int32))["params"]
  encode = jax.jit(lambda x: model.apply({"params": params}, normalize_images(x),
                                         method=model.encode_image))
  query = rng.normal(size=(1, cfg.embed_dim)).astype(np.float32)
  maps, _ = occlusion.occlusion_maps(lambda x: np.asarray(encode(x)), pair, query, 8, 8)
  changed = np.zeros((32, 32), bool)
  changed[16:24, 8:16] = True
  assert np.abs(maps[0][~changed]).max() < 1e-6           # hiding there changes no input
  assert np.abs(maps[0][changed]).min() > 1e-4            # undoing the change moves the score
  same, _ = occlusion.occlusion_maps(lambda x: np.asarray(encode(x)), np.stack([before, before]),
                                     query, 8, 8)
  assert np.abs(same).max() < 1e-6                        # no change: nothing to undo


def test_occlusion_map_peaks_on_the_lone_object_a_trained_model_names():
  """A small model trained to name five classes (tests/lone_objects.py): each test image's map
  for its class prompt lands on the object's boxes; before training it does not."""
  from lone_objects import images, localisation_scores, train_classifier
  from rsjax.evaluation import heatmaps

  trained = train_classifier(seed=0)
  assert trained.final_loss < 0.5                     # it learned (chance: log 5 = 1.61)
  test_x, test_y, boxes = images(2, 32)
  scores = {}
  for name, params in (("trained", trained.params), ("untrained", trained.untrained)):
    maker = heatmaps.MapMaker(trained.model, params, trained.mesh, 64, window=8, stride=4)
    maps, _ = maker.query_maps(test_x, trained.prompts[test_y])
    scores[name] = localisation_scores(maps, boxes)
  area = scores["trained"]["box_area"]                 # the boxes: ~8% of the pixels
  assert scores["trained"]["peak_inside"] >= 0.75 > 5 * area, scores
  assert scores["trained"]["inside_above_outside"] >= 0.75, scores
  assert scores["untrained"]["inside_above_outside"] <= 0.5, scores
