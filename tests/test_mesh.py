"""Any mesh shape trains like one device; gradient accumulation; restore onto another mesh shape.

All on 8 fake CPU devices (tests/conftest.py) with the tiny test model in float32. Tolerance: losses
rtol 1e-5; parameters after two AdamW steps rtol 1e-4, atol 1e-6. Sharding changes only the order
of float32 sums (mean over a split batch, psums across devices), which moves results by a few ulps;
AdamW divides by sqrt(v), which amplifies that on parameters whose gradient is near zero, hence the
looser parameter tolerance.
"""

import jax
import numpy as np
import optax
import pytest

from helpers import random_batches, tiny_config
from rsjax import parallel
from rsjax import optim
from rsjax import state as state_lib
from rsjax.train import step as train_step
from rsjax.checkpoint import Checkpointer
from rsjax.data import pipeline

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 8, 1)]


def _config(shape=(1, 1, 1), *overrides):
  data, fsdp, tensor = shape
  return tiny_config(f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}", *overrides)


def _devices(shape):
  return jax.devices()[:int(np.prod(shape))]


_COMPILED: dict = {}  # (shape, overrides, optimizer name) -> (mesh, shardings, step fn)


def _compiled(shape, *overrides, tx=None, tx_name="adamw"):
  """The jitted step on `shape`, compiled once per session (compiling dominates these tests)."""
  key = (shape, overrides, tx_name)
  if key not in _COMPILED:
    config = _config(shape, *overrides)
    mesh = parallel.make_mesh(config, _devices(shape))
    model = state_lib.create_model(config)
    tx = tx or optim.make_optimizer(config.train)
    _, shardings = state_lib.state_layout(model, tx, config, mesh)
    step = train_step.make_train_step(model, tx, config, mesh)
    _COMPILED[key] = (mesh, shardings, train_step.compile_train_step(step, shardings, mesh))
  return _COMPILED[key]


@pytest.fixture(scope="module")
def initial_state():
  """The initial train state (AdamW) on the host; every mesh starts from these same values."""
  config = _config()
  mesh = parallel.make_mesh(config, _devices((1, 1, 1)))
  state, _ = state_lib.init_state(state_lib.create_model(config), optim.make_optimizer(config.train),
                              config, mesh, jax.random.key(0))
  return jax.device_get(state)


def _steps(mesh, state, step_fn, batches):
  losses = []
  with jax.set_mesh(mesh):
    for batch in batches:
      state, m = step_fn(state, parallel.shard_batch(batch, mesh))
      losses.append(float(jax.block_until_ready(m["loss"])))  # blocking avoids CPU collective stalls
  return state, losses


def _run(host_state, shape, batches, *overrides, tx=None, tx_name="adamw"):
  """Places `host_state` on mesh `shape`, runs one step per batch: (final state, losses)."""
  mesh, shardings, step_fn = _compiled(shape, *overrides, tx=tx, tx_name=tx_name)
  return _steps(mesh, jax.device_put(host_state, shardings), step_fn, batches)


def _assert_params_close(actual, expected):
  for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def single_device_run(initial_state):
  batches = random_batches(seed=0, count=2)
  state, losses = _run(initial_state, (1, 1, 1), batches)
  assert losses[1] != losses[0]  # the first step really changed the parameters
  return batches, losses, jax.device_get(state.params)


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_mesh_matches_one_device(initial_state, single_device_run, shape):
  batches, losses1, params1 = single_device_run
  mesh, shardings, step_fn = _compiled(shape)
  assert tuple(mesh.shape.values()) == shape
  state = jax.device_put(initial_state, shardings)
  if shape[1] > 1:  # FSDP really splits parameters: a [D, 4D] MLP kernel is cut along D
    kernel = state.params["image"]["encoder"]["block0"]["mlp"]["fc1"]["kernel"]
    assert kernel.sharding.shard_shape(kernel.shape)[0] == kernel.shape[0] // shape[1]
  if shape[2] > 1:  # tensor parallelism splits the MLP features
    kernel = state.params["image"]["encoder"]["block0"]["mlp"]["fc1"]["kernel"]
    assert kernel.sharding.shard_shape(kernel.shape)[1] == kernel.shape[1] // shape[2]
  state, losses = _steps(mesh, state, step_fn, batches)
  np.testing.assert_allclose(losses, losses1, rtol=1e-5)
  _assert_params_close(jax.device_get(state.params), params1)


def test_grad_accumulation_averages_micro_batches(initial_state):
  """k = 2 micro-batches on mesh (2, 4, 1): the loss is the mean of the two micro-batch losses and,
  with SGD (lr 0.1), the update is the mean of the two single-micro-batch updates on 1 device."""
  sgd = optax.sgd(0.1)
  start = state_lib.TrainState(step=initial_state.step, params=initial_state.params,
                           opt_state=sgd.init(initial_state.params))
  batch = random_batches(seed=2, count=1)[0]
  state, (loss,) = _run(start, (2, 4, 1), [batch], "train.grad_accum_steps=2", tx=sgd,
                        tx_name="sgd")
  singles, micro_losses = [], []
  for j in range(2):  # micro-batch j holds rows j, j + 2, j + 4, ... (train_step.split_micro_batches)
    micro = {k: v[j::2] for k, v in batch.items()}
    one_state, (one_loss,) = _run(start, (1, 1, 1), [micro], tx=sgd, tx_name="sgd")
    singles.append(jax.device_get(one_state.params))
    micro_losses.append(one_loss)
  assert micro_losses[0] != micro_losses[1]
  np.testing.assert_allclose(loss, np.mean(micro_losses), rtol=1e-5)
  mean_params = jax.tree.map(lambda a, b: (a + b) / 2, *singles)
  _assert_params_close(jax.device_get(state.params), mean_params)


def test_batch_must_split_into_micro_batches_per_device():
  config = _config((8, 1, 1), "train.grad_accum_steps=4")  # 16 rows / 8 devices = 2 < 4
  with pytest.raises(parallel.MeshError, match="8 data-parallel devices x 4 micro-batches"):
    parallel.check_batch(16, parallel.make_mesh(config), train_step.grad_accum_steps(config))


def test_checkpoint_restores_onto_another_mesh(initial_state, tmp_path):
  """Saved on (2, 4, 1) after 2 steps, restored onto (8, 1, 1): steps 3-4 equal those of the run
  that stayed on (2, 4, 1), and the data iterator resumes where it was."""
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
  tokens = np.concatenate([rng.integers(4, 200, (64, 2, 10)), np.full((64, 2, 1), 3),
                           np.zeros((64, 2, 13), int)], 2).astype(np.int32)
  make_iter = lambda: pipeline.train_iterator(images, tokens, 16, seed=0)

  it = make_iter()
  state, _ = _run(initial_state, (2, 4, 1), [next(it), next(it)])
  ckpt = Checkpointer(tmp_path / "ckpt")
  ckpt.save(2, state, it, _config((2, 4, 1)))
  mesh_a, _, step_a = _compiled((2, 4, 1))
  straight, straight_losses = _steps(mesh_a, state, step_a, [next(it), next(it)])

  config_b = _config((8, 1, 1))
  mesh_b, shardings_b, step_b = _compiled((8, 1, 1))
  abstract, _ = state_lib.state_layout(state_lib.create_model(config_b),
                                   optim.make_optimizer(config_b.train), config_b, mesh_b)
  resumed_it = make_iter()
  restored = ckpt.restore(2, abstract, resumed_it)
  ckpt.close()
  assert int(restored.step) == 2
  assert jax.tree.leaves(restored.params)[0].sharding.mesh.shape == mesh_b.shape
  resumed, resumed_losses = _steps(mesh_b, restored, step_b, [next(resumed_it), next(resumed_it)])
  np.testing.assert_allclose(resumed_losses, straight_losses, rtol=1e-5)
  _assert_params_close(jax.device_get(resumed.params), jax.device_get(straight.params))


HYBRID = ("model.image.pyramid.enabled=True", "model.image.pyramid.taps=(0, 0)",
          "model.image.pyramid.lateral=pixels")


def test_a_hybrid_pyramid_trains_on_a_2x4_mesh_like_one_device():
  """The pyramid with pixel laterals, sharded on data x FSDP: three steps (the zero gate opens
  at the first, the laterals learn from the second) equal one device's."""
  config = _config((1, 1, 1), *HYBRID)
  mesh = parallel.make_mesh(config, _devices((1, 1, 1)))
  state, _ = state_lib.init_state(state_lib.create_model(config),
                                  optim.make_optimizer(config.train), config, mesh,
                                  jax.random.key(0))
  host = jax.device_get(state)
  batches = random_batches(seed=0, count=3)
  one, losses_one = _run(host, (1, 1, 1), batches, *HYBRID)
  mesh_run, losses_mesh = _run(host, (2, 4, 1), batches, *HYBRID)
  np.testing.assert_allclose(losses_mesh, losses_one, rtol=1e-5)
  _assert_params_close(jax.device_get(mesh_run.params), jax.device_get(one.params))
  pyramid = jax.device_get(one.params)["image"]["pyramid"]
  assert float(pyramid["gate"]) != 0.0
  before = host.params["image"]["pyramid"]["lateral"]["conv_s2"]["kernel"]
  assert float(np.abs(pyramid["lateral"]["conv_s2"]["kernel"] - before).max()) > 0
