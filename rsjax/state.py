"""The train state: model, parameters and optimizer state, laid out on the mesh; and a run's
trained model restored from its checkpoints.

Everything that needs a model from a config or a checkpoint (the trainer, evaluation, `rsjax
index` / `search` / `export`, `rsjax plan`) builds it here, so none of them imports the trainer.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from rsjax import optim, parallel
from rsjax.checkpoint import Checkpointer, abstract_like
from rsjax.models.two_tower import TwoTower


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def create_model(config: ml_collections.ConfigDict) -> TwoTower:
  return TwoTower(config.model)


def boxed_state_fn(model: TwoTower, tx: optax.GradientTransformation,
                   config: ml_collections.ConfigDict) -> Callable:
  """key -> TrainState whose parameter leaves are boxed with their logical axis names."""
  images = jnp.zeros((1, config.data.image_size, config.data.image_size, 3), jnp.float32)
  ids = jnp.ones((1, config.model.text.context_length), jnp.int32)

  def boxed_state(key):
    params = model.init(key, images, ids)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  return boxed_state


def state_layout(model: TwoTower, tx: optax.GradientTransformation,
                 config: ml_collections.ConfigDict, mesh):
  """(abstract state with shardings, state shardings) without allocating anything."""
  boxed_state = boxed_state_fn(model, tx, config)
  rules = parallel.rules_for(config)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract = jax.eval_shape(boxed_state, jax.random.key(0))
    shardings = parallel.logical_to_sharding(nn.get_partition_spec(abstract), mesh, rules)
  return abstract_like(nn.meta.unbox(abstract), shardings), shardings


def init_state(model: TwoTower, tx: optax.GradientTransformation,
               config: ml_collections.ConfigDict, mesh, rng: jax.Array):
  """Initialises the train state directly in its sharded layout. Returns (state, state_shardings)."""
  boxed_state = boxed_state_fn(model, tx, config)
  _, shardings = state_layout(model, tx, config, mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(parallel.rules_for(config)):
    state = jax.jit(lambda key: nn.meta.unbox(boxed_state(key)), out_shardings=shardings)(rng)
  return state, shardings


def state_from_params(params, tx: optax.GradientTransformation, shardings) -> TrainState:
  """A step-0 state around given parameters (e.g. converted CLIP weights), in the sharded layout."""
  return jax.jit(lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)),
                 out_shardings=shardings)(params)


# ---------------------------------------------------------------------------------------------
# A trained run on disk: <workdir>/checkpoints/<step>/ and <workdir>/tokenizer.model.


def checkpoint_dir(path: str) -> str:
  """A workdir (with checkpoints/) or a checkpoints folder -> the checkpoints folder."""
  inner = os.path.join(path, "checkpoints")
  return inner if os.path.isdir(inner) else path


def load_model(config, checkpoint: str, mesh, step: int | None = None,
               check_config: bool = False):
  """(model, params, step) from the latest (or given) checkpoint under `checkpoint` (a workdir or
  its checkpoints folder). `check_config` also refuses a checkpoint written for other model.* keys."""
  ckpt = Checkpointer(checkpoint_dir(checkpoint))
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory}; train first")
    model = create_model(config)
    abstract, _ = state_layout(model, optim.make_optimizer(config.train), config, mesh)
    state = ckpt.restore(step, abstract, config=config if check_config else None)
  finally:
    ckpt.close()
  return model, state.params, int(step)


def tokenizer_path(checkpoint: str, given: str | None = None) -> str:
  """The run's SentencePiece model: `given`, else tokenizer.model in the workdir."""
  if not os.path.isdir(checkpoint):
    raise FileNotFoundError(f"--checkpoint {checkpoint}: no such run folder (the --workdir of "
                            "an `rsjax train` run, or its checkpoints folder)")
  if given:
    path = given
  else:
    base = os.path.abspath(checkpoint)
    workdir = base if os.path.isdir(os.path.join(base, "checkpoints")) else os.path.dirname(base)
    path = os.path.join(workdir, "tokenizer.model")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"tokenizer {path} not found; pass --tokenizer PATH (the "
                            "tokenizer.model the model was trained with)")
  return path
