"""AdamW weight decay lands on matrices and embeddings only, as in CLIP: never on biases (also the
[3, heads, head_dim] attention biases), norm scales or the logit scale/bias."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from helpers import tiny_config
from rsjax import optim
from rsjax import state as state_lib


def _params(config):
  model = state_lib.create_model(config)
  images = jnp.zeros((1, config.data.image_size, config.data.image_size, 3), jnp.float32)
  ids = jnp.ones((1, config.model.text.context_length), jnp.int32)
  return model.init(jax.random.key(0), images, ids)["params"]


def _config():
  return tiny_config("model.image.pyramid.enabled=True", "model.image.pyramid.taps=(0,)",
                     "model.image.pyramid.strides=(8,)", "model.image.pyramid.channels=16",
                     "model.image.pyramid.pool=attention", "model.hashing.bits=16",
                     "model.logit_bias=True", "train.weight_decay=0.5",
                     "train.grad_clip_norm=0.0")


def _moved_by_decay_alone(config, params):
  """Paths whose value an update with zero gradients changes (Adam's step is zero there)."""
  params = jax.tree.map(lambda p: jnp.ones_like(p), nn.meta.unbox(params))
  tx = optim.make_optimizer(config.train)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  for _ in range(3):  # past the warmup's zero learning rate at step 0
    updates, state = tx.update(zeros, state, params)
    params_after = optax.apply_updates(params, updates)
  moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                       params_after, params)
  return {jax.tree_util.keystr(path): m for path, m in jax.tree_util.tree_leaves_with_path(moved)}


def test_decay_on_matrices_and_embeddings_not_on_biases_norms_or_scales():
  config = _config()
  moved = _moved_by_decay_alone(config, _params(config))
  decayed = {p for p, m in moved.items() if m}
  kept = {p for p, m in moved.items() if not m}

  def named(paths, *parts):
    return [p for p in paths if all(part in p for part in parts)]

  # Decayed: attention and MLP kernels, embeddings, projections, stem/patch kernels.
  for parts in (("qkv_kernel",), ("out_kernel",), ("fc1", "kernel"), ("token_embed",),
                ("pos_embed",), ("proj", "kernel"), ("hash", "kernel"),
                ("pool_s8", "attn", "query", "kernel")):
    assert named(moved, *parts), parts  # the tiny model has such a parameter
    assert set(named(moved, *parts)) <= decayed, parts
  # Not decayed: every bias (the [3, H, Dh] qkv bias and the pyramid's [H, Dh] ones
  # included), layer norms, the logit scale and bias.
  for parts in (("qkv_bias",), ("pool_s8", "attn", "key", "bias"), ("scale",), ("logit_scale",),
                ("logit_bias",), ("norm",)):
    assert named(moved, *parts), parts
    assert set(named(moved, *parts)) <= kept, parts
