"""The train state: model, parameters and optimizer state, laid out on the mesh.

Everything that needs a model from a config (the trainer, evaluation, `rsjax index` / `search` /
`export`, `rsjax plan`) builds it here, so none of them imports the trainer; a trained run on
disk is read back by rsjax/runs.py.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from rsjax import parallel, trainable
from rsjax.checkpoint import abstract_like
from rsjax.models.two_tower import TwoTower


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def create_model(config: ml_collections.ConfigDict) -> TwoTower:
  """The run's model: a change encoder when the config has a model.temporal section
  (rsjax/models/temporal.py), else the dual encoder; with train.frozen_dtype a tower whose base is
  frozen computes in it."""
  from rsjax.models.temporal import ChangeTwoTower, is_temporal

  kind = ChangeTwoTower if is_temporal(config.model) else TwoTower
  return kind(config.model, tower_dtypes=trainable.frozen_tower_dtypes(config.train))


def _dummy_inputs(config: ml_collections.ConfigDict):
  size = config.data.image_size
  dates = (config.model.temporal.dates,) if "temporal" in config.model else ()
  images = jnp.zeros((1, *dates, size, size, 3), jnp.float32)
  ids = jnp.ones((1, config.model.text.context_length), jnp.int32)
  return images, ids


def boxed_params_fn(model: TwoTower, config: ml_collections.ConfigDict) -> Callable:
  """key -> every parameter of the model, boxed with its logical axis names."""
  images, ids = _dummy_inputs(config)
  return lambda key: model.init(key, images, ids)["params"]


def boxed_state_fn(model: TwoTower, tx: optax.GradientTransformation,
                   config: ml_collections.ConfigDict) -> Callable:
  """key -> TrainState whose parameter leaves are boxed with their logical axis names. With
  train.frozen, the state holds the trained parameters only (rsjax/trainable.py)."""
  boxed_params = boxed_params_fn(model, config)

  def boxed_state(key):
    params = boxed_params(key)
    selection = trainable.Selection.of(config, params)
    if selection.any_frozen:
      params, _ = selection.split(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  return boxed_state


def _layout(boxed_fn: Callable, config: ml_collections.ConfigDict, mesh):
  rules = parallel.rules_for(config)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract = jax.eval_shape(boxed_fn, jax.random.key(0))
    shardings = parallel.logical_to_sharding(nn.get_partition_spec(abstract), mesh, rules)
  return abstract_like(nn.meta.unbox(abstract), shardings), shardings


def state_layout(model: TwoTower, tx: optax.GradientTransformation,
                 config: ml_collections.ConfigDict, mesh):
  """(abstract state with shardings, state shardings) without allocating anything."""
  return _layout(boxed_state_fn(model, tx, config), config, mesh)


def params_layout(model: TwoTower, config: ml_collections.ConfigDict, mesh):
  """(abstract parameters with shardings, their shardings): every parameter, frozen or not."""
  return _layout(boxed_params_fn(model, config), config, mesh)


def init_params(model: TwoTower, config: ml_collections.ConfigDict, mesh, rng: jax.Array):
  """Every parameter of the model, initialised from `rng` directly in its sharded layout."""
  boxed_params = boxed_params_fn(model, config)
  _, shardings = params_layout(model, config, mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(parallel.rules_for(config)):
    return jax.jit(lambda key: nn.meta.unbox(boxed_params(key)), out_shardings=shardings)(rng)


def init_state(model: TwoTower, tx: optax.GradientTransformation,
               config: ml_collections.ConfigDict, mesh, rng: jax.Array):
  """Initialises the train state directly in its sharded layout. Returns (state, state_shardings)."""
  boxed_state = boxed_state_fn(model, tx, config)
  _, shardings = state_layout(model, tx, config, mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(parallel.rules_for(config)):
    state = jax.jit(lambda key: nn.meta.unbox(boxed_state(key)), out_shardings=shardings)(rng)
  return state, shardings


def state_from_params(params, tx: optax.GradientTransformation, shardings) -> TrainState:
  """A step-0 state around given parameters (e.g. converted CLIP weights), in the sharded layout.
  With train.frozen, `params` are the trained parameters only."""
  return jax.jit(lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)),
                 out_shardings=shardings)(params)
