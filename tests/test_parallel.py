"""Mesh errors; config-driven heads and losses train on 8 fake CPU devices.

That any mesh shape trains like one device is tested in tests/test_mesh.py."""

import jax
import numpy as np

from helpers import random_batches, tiny_config
from rsjax import parallel
from rsjax import optim
from rsjax import state as state_lib
from rsjax.train import step as train_step


def test_mesh_errors_name_the_problem():
  import pytest
  config = tiny_config("mesh.data=3")
  with pytest.raises(parallel.MeshError, match="does not divide 8 devices"):
    parallel.make_mesh(config)
  config = tiny_config("train.batch_size=12")
  with pytest.raises(parallel.MeshError, match="not divisible by the 8 data-parallel"):
    parallel.check_batch(config.train.batch_size, parallel.make_mesh(config))


def test_hashing_head_and_siglip_train_on_the_mesh():
  """Config-driven assembly: a 16-bit hashing head and the SigLIP loss train on 8 devices."""
  config = tiny_config("model.hashing.bits=16", "train.loss=siglip", "model.logit_bias=True",
                       "model.init_logit_bias=-10.0")
  batches = random_batches(seed=1, count=2)
  mesh = parallel.make_mesh(config)
  model = state_lib.create_model(config)
  tx = optim.make_optimizer(config.train)
  state, shardings = state_lib.init_state(model, tx, config, mesh, jax.random.key(0))
  step_fn = train_step.compile_train_step(train_step.make_train_step(model, tx, config, mesh), shardings, mesh)
  before = jax.device_get(state.params["image_hash"]["hash"]["kernel"])
  with jax.set_mesh(mesh):
    for batch in batches:
      state, m = step_fn(state, parallel.shard_batch(batch, mesh))
      jax.block_until_ready(m)
  m = jax.device_get(m)
  assert {"hash_similarity", "hash_quantization", "hash_balance"} <= set(m)
  assert all(np.isfinite(float(v)) for v in m.values())
  assert float(m["loss"]) > float(m["contrastive_loss"])  # the hashing terms were added
  after = jax.device_get(state.params["image_hash"]["hash"]["kernel"])
  assert np.abs(after - before).max() > 0
