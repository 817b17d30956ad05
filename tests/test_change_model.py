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
