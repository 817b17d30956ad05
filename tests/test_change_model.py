"""The change encoder (rsjax/models/temporal.py): order matters, N dates, max_dates, single-image
params as a subtree."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from helpers import tiny_config
from rsjax.errors import ConfigError
from rsjax.models.temporal import ChangeTwoTower, default_temporal_config
from rsjax.models.two_tower import TwoTower


def _model(**temporal):
  cfg = ml_collections.ConfigDict(tiny_config().model.to_dict())  # unlocked copy
  t = default_temporal_config()
  t.update(temporal)
  cfg.temporal = t
  return ChangeTwoTower(cfg), TwoTower(tiny_config().model)


def _dates(t, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(0, 1, (2, t, 32, 32, 3)), jnp.float32)


def _ids():
  return jnp.asarray(np.random.default_rng(1).integers(4, 200, (2, 24)), jnp.int32)


@pytest.fixture(scope="module")
def pair_model():
  model, single = _model()
  dates = _dates(2)
  params = model.init(jax.random.PRNGKey(0), dates, _ids())
  return model, single, params, dates


def test_outputs_and_swap_changes_embedding(pair_model):
  model, _, params, dates = pair_model
  out = model.apply(params, dates, _ids())
  assert out["change_logit"].shape == (2,)
  emb = model.apply(params, dates, method=model.encode_image)
  assert emb.shape == (2, 16)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=1), 1.0, atol=1e-4)
  swapped = model.apply(params, dates[:, ::-1], method=model.encode_image)
  assert float(jnp.max(jnp.abs(emb - swapped))) > 1e-3


def test_three_dates_run_and_too_many_refused(pair_model):
  model, _, params, _ = pair_model
  emb = model.apply(params, _dates(3), method=model.encode_image)
  assert emb.shape == (2, 16) and bool(jnp.all(jnp.isfinite(emb)))
  with pytest.raises(ConfigError, match="max_dates"):
    model.apply(params, _dates(5), method=model.encode_image)


def test_single_image_params_are_a_subtree(pair_model):
  _, single, params, dates = pair_model
  single_params = single.init(jax.random.PRNGKey(1), dates[:, 0], _ids())
  flat_pair = {k: v.shape for k, v in jax.tree_util.tree_leaves_with_path(params["params"])}
  flat_single = {k: v.shape for k, v in jax.tree_util.tree_leaves_with_path(single_params["params"])}
  for path, shape in flat_single.items():
    assert flat_pair.get(path) == shape, path


@pytest.mark.parametrize("fusion", ["late_fusion", "second_image"])
def test_baselines(fusion):
  model, _ = _model(fusion=fusion)
  dates = _dates(2)
  params = model.init(jax.random.PRNGKey(0), dates, _ids())
  out = model.apply(params, dates, _ids())
  assert out["image"].shape == (2, 16) and out["change_logit"].shape == (2,)


def test_unknown_fusion_refused():
  model, _ = _model(fusion="bogus")
  with pytest.raises(ConfigError, match="model.temporal.fusion"):
    model.init(jax.random.PRNGKey(0), _dates(2), _ids())


def test_change_regions_share_the_change_embedding_and_its_parameters(pair_model):
  """image_regions: the change embedding (encode_image's, before normalising) and one vector per
  trunk position, the fused difference token through the same projection; no new parameters."""
  model, _, params, dates = pair_model
  out = model.apply(params, dates, method=model.image_regions)
  assert out["patches"].shape == (2, 4, 4, out["embedding"].shape[-1])
  emb = model.apply(params, dates, method=model.encode_image)
  unit = out["embedding"] / jnp.linalg.norm(out["embedding"], axis=-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(emb), np.asarray(unit), atol=1e-5)
  regions_only = model.init(jax.random.PRNGKey(0), dates, method=model.image_regions)["params"]
  paths = {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(regions_only)}
  assert paths <= {jax.tree_util.keystr(k)
                   for k, _ in jax.tree_util.tree_leaves_with_path(params["params"])}


def _directional_pairs(n, split, size=32):
  """n RS-Synth temporal pairs whose change is buildings added (label 0) or removed (label 1):
  uint8 [n, 2, size, size, 3] and labels [n]."""
  from rsjax.data.rs_synth.temporal_splits import TemporalSplitSpec, render_temporal_example

  spec = TemporalSplitSpec(image_size=size, no_change=0.0)
  dates, labels, i = [], [], 0
  while len(dates) < n:
    seq, rec = render_temporal_example(spec, split, i)
    i += 1
    if rec["change"] in ("buildings_added", "buildings_removed"):
      dates.append(seq)
      labels.append(int(rec["change"] == "buildings_removed"))
  return np.stack(dates), np.asarray(labels)


def test_built_and_demolished_pairs_retrieve_their_own_caption_and_swap_it():
  """Order is the signal: trained on built / demolished pairs against the two captions, the top
  caption of a held-out pair names its direction, and the same pair with its dates swapped
  retrieves the other caption."""
  import optax

  from rsjax.pixels import normalize_images

  model, _ = _model()
  train_x, train_y = _directional_pairs(1536, "train")
  test_x, test_y = _directional_pairs(96, "test")
  prompts = np.zeros((2, 24), np.int32)        # "buildings were built" / "... demolished"
  prompts[:, 0], prompts[:, 1] = (5, 6), 3
  params = model.init(jax.random.key(0), jnp.zeros((1, 2, 32, 32, 3)), jnp.asarray(prompts))
  params = params["params"]
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(params)

  def logits(p, x):
    img = model.apply({"params": p}, normalize_images(x), method=model.encode_image)
    return 10.0 * img @ model.apply({"params": p}, jnp.asarray(prompts),
                                    method=model.encode_text).T

  @jax.jit
  def step(p, s, x, y):
    loss, grads = jax.value_and_grad(
        lambda q: optax.softmax_cross_entropy_with_integer_labels(logits(q, x), y).mean())(p)
    updates, s = optimizer.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  rng = np.random.default_rng(0)
  for _ in range(800):
    batch = rng.integers(0, len(train_x), 32)
    params, opt_state, _ = step(params, opt_state, train_x[batch], train_y[batch])
  top = np.argmax(np.asarray(jax.jit(logits)(params, test_x)), 1)
  top_swapped = np.argmax(np.asarray(jax.jit(logits)(params, test_x[:, ::-1])), 1)
  # Measured on this CPU: 77% and 77% at 48 test pairs (chance 50%; 65% of 96 is p < 0.002).
  assert np.mean(top == test_y) >= 0.65, np.mean(top == test_y)
  assert np.mean(top_swapped == 1 - test_y) >= 0.65, np.mean(top_swapped == 1 - test_y)


def test_the_pixel_detector_shares_nothing_with_the_embedding(pair_model):
  """detector="pixels" adds its own parameters only: with the pooled model's other parameters,
  the change embedding is the same; the logit comes from the pixels."""
  model, _, params, dates = pair_model
  pixels, _ = _model(detector="pixels")
  own = pixels.init(jax.random.PRNGKey(0), dates, _ids())["params"]
  assert set(own) - set(params["params"]) == set() and "conv0" in own["change_head"]
  mixed = {**params["params"], "change_head": own["change_head"]}
  np.testing.assert_array_equal(
      np.asarray(pixels.apply({"params": mixed}, dates, method=pixels.encode_image)),
      np.asarray(model.apply(params, dates, method=model.encode_image)))
  assert pixels.apply({"params": mixed}, dates, _ids())["change_logit"].shape == (2,)
  bogus, _ = _model(detector="bogus")
  with pytest.raises(ConfigError, match="model.temporal.detector"):
    bogus.init(jax.random.PRNGKey(0), dates, _ids())


def test_the_pixel_detector_finds_a_two_pixel_change_under_nuisance():
  """Pairs that differ by illumination, sensor noise and a 1 px shift, half of them also by a
  2x2 spot: trained 100 steps (each on fresh pairs), the pixel detector tells them apart on
  held-out pairs."""
  import optax

  from rsjax.models.change_detector import PixelChangeDetector

  def pairs(n, seed):
    rng = np.random.default_rng(seed)
    before = rng.uniform(0.3, 0.7, (n, 1, 32, 32, 1)) * np.ones((1, 1, 1, 1, 3))
    before = np.repeat(np.repeat(before[:, :, ::4, ::4], 4, 2), 4, 3)      # blocky fields
    after = np.roll(before, rng.integers(-1, 2), axis=3) * rng.uniform(0.9, 1.1, (n, 1, 1, 1, 3))
    changed = rng.random(n) < 0.5
    for i in np.flatnonzero(changed):
      y, x = rng.integers(2, 28, 2)
      after[i, 0, y:y + 2, x:x + 2] = 0.05                                 # a dark new roof
    dates = np.concatenate([before, after], 1) + rng.normal(0, 0.02, (n, 2, 32, 32, 3))
    return jnp.asarray(2 * dates - 1, jnp.float32), jnp.asarray(changed, jnp.float32)

  detector = PixelChangeDetector()
  train_x, train_y = pairs(3200, 0)
  test_x, test_y = pairs(128, 1)
  params = detector.init(jax.random.key(0), train_x[:1])
  optimizer = optax.adam(3e-3)
  state = optimizer.init(params)

  @jax.jit
  def step(p, s, x, y):
    loss, grads = jax.value_and_grad(
        lambda q: optax.sigmoid_binary_cross_entropy(detector.apply(q, x), y).mean())(p)
    updates, s = optimizer.update(grads, s)
    return optax.apply_updates(p, updates), s, loss

  untrained = float(jnp.mean((detector.apply(params, test_x) > 0) == (test_y > 0.5)))
  for i in range(100):
    params, state, _ = step(params, state, train_x[32 * i:32 * (i + 1)], train_y[32 * i:32 * (i + 1)])
  accuracy = float(jnp.mean((detector.apply(params, test_x) > 0) == (test_y > 0.5)))
  assert untrained < 0.7 and accuracy >= 0.95, (untrained, accuracy)
