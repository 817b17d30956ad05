"""Efficiency figures (rsjax/evaluation/efficiency.py): FLOPs against a hand count, parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_config
from rsjax import state
from rsjax.evaluation import efficiency


def test_flops_of_a_matmul_are_two_m_n_k():
  a = jax.ShapeDtypeStruct((3, 5), jnp.float32)
  b = jax.ShapeDtypeStruct((5, 7), jnp.float32)
  assert efficiency.compiled_flops(lambda x, y: x @ y, a, b) == 2 * 3 * 5 * 7


def vit_layer_dots(tokens, width, heads, mlp_ratio):
  """Hand count of one pre-norm ViT block's matmuls, 2 FLOPs per multiply-add."""
  head = width // heads
  qkv = 2 * tokens * width * 3 * width
  attention = 2 * (2 * heads * tokens * tokens * head)  # scores and the weighted values
  out = 2 * tokens * width * width
  mlp = 2 * (2 * tokens * width * int(mlp_ratio * width))
  return qkv + attention + out + mlp


def test_each_image_layer_costs_its_hand_counted_matmuls():
  """TINY: 32 px, patch 8 -> 16 patches + [CLS] = 17 tokens of width 32, 2 heads, MLP x4. One
  more layer adds the same FLOPs each time: its matmuls plus a few percent of elementwise work
  (layer norms, GELU, softmax), never less than the matmuls."""
  flops = [efficiency.encoder_flops(state.create_model(tiny_config(f"model.image.depth={d}")),
                                    32, 24)["flops_per_image"] for d in (1, 2, 3)]
  layer = flops[1] - flops[0]
  assert flops[2] - flops[1] == layer
  dots = vit_layer_dots(17, 32, 2, 4.0)
  assert dots == 454784
  assert dots <= layer <= 1.1 * dots, (layer, dots)
  # A scanned stack is counted by an unscanned copy (cost analysis would count its body once).
  scanned = efficiency.encoder_flops(
      state.create_model(tiny_config("model.image.depth=3", "model.scan=True")), 32, 24)
  assert scanned["flops_per_image"] == flops[2]


def test_parameters_counted_per_tower():
  config = tiny_config("model.hashing.bits=16")
  model = state.create_model(config)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                             jnp.ones((1, 24), jnp.int32)))["params"]
  counts = efficiency.count_params(params)
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert counts["total"] == total == counts["image"] + counts["text"] + counts["other"]
  assert counts["image"] == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params["image"]))
  assert counts["other"] > 0  # the hashing heads and the temperature
