"""Model family: CLIP parameter counts, the zero pyramid gate, pooling masks, hashing codes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsjax.models import heads
from rsjax.models.registry import default_model_config, list_models, model_config
from rsjax.models.two_tower import TwoTower
from rsjax.models.vit import interpolate_pos_embed

# open_clip's parameter counts of the same architectures (its model profile table; checkable by
# summing `p.numel()` over `open_clip.create_model(name).parameters()`).
OPEN_CLIP_PARAMS = {"ViT-B-32": 151_277_313, "ViT-B-16": 149_620_737, "ViT-L-14": 427_616_513}


def _count(model, image_size, context):
  shapes = jax.eval_shape(
      model.init, jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)),
      jnp.ones((1, context), jnp.int32))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(shapes)))


@pytest.mark.parametrize("name", sorted(OPEN_CLIP_PARAMS))
def test_clip_parameter_counts_equal_open_clip(name):
  config, image_size = model_config(name)
  assert _count(TwoTower(config), image_size, config.text.context_length) == OPEN_CLIP_PARAMS[name]


def test_registry_lists_quickgelu_variants():
  assert "ViT-B-32-quickgelu" in list_models()
  assert model_config("ViT-B-32-quickgelu")[0].activation == "quick_gelu"
  with pytest.raises(ValueError, match="unknown model"):
    model_config("ViT-Z-99")


def _small(**image):
  c = default_model_config()
  c.image.update(width=32, depth=4, heads=2, patch_size=8, **image)
  c.text.update(width=32, depth=2, heads=2)
  c.embed_dim = 16
  return c


def _init(config, size=32, context=12):
  model = TwoTower(config)
  params = model.init(jax.random.key(1), jnp.zeros((2, size, size, 3)),
                      jnp.ones((2, context), jnp.int32))["params"]
  return model, nn.meta.unbox(params)


@pytest.mark.parametrize("lateral", ["none", "pixels"])
def test_pyramid_with_zero_gate_equals_plain_vit_exactly(lateral):
  with_pyr = _small()
  with_pyr.image.pyramid.update(enabled=True, taps=(0, 1, 2, 3), strides=(4, 8, 16, 32),
                                channels=16, lateral=lateral)
  model, params = _init(with_pyr)
  assert ("lateral" in params["image"]["pyramid"]) == (lateral == "pixels")
  assert float(params["image"]["pyramid"]["gate"]) == 0.0
  plain_model = TwoTower(_small())
  plain_params = dict(params)
  plain_params["image"] = {k: v for k, v in params["image"].items() if k != "pyramid"}
  images = jax.random.uniform(jax.random.key(2), (3, 32, 32, 3))
  a = model.apply({"params": params}, images, method=model.encode_image)
  b = plain_model.apply({"params": plain_params}, images, method=plain_model.encode_image)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The pyramid really has stride-4 maps and a path to the embedding once the gate opens.
  out = model.apply({"params": params}, images, method=lambda m, x: m.image(x))
  assert out["maps"][4].shape == (3, 8, 8, 16) and out["maps"][32].shape == (3, 1, 1, 16)
  params["image"]["pyramid"]["gate"] = jnp.float32(1.0)
  c = model.apply({"params": params}, images, method=model.encode_image)
  assert float(jnp.abs(c - a).max()) > 1e-4
  # gate_init starts the gate open (training from scratch); the rest is initialised the same.
  with_pyr.image.pyramid.gate_init = 1.0
  _, opened = _init(with_pyr)
  assert float(opened["image"]["pyramid"]["gate"]) == 1.0
  np.testing.assert_array_equal(
      np.asarray(model.apply({"params": opened}, images, method=model.encode_image)), np.asarray(c))


@pytest.mark.parametrize("pool,causal", [("eot", True), ("mean", False), ("cls", False)])
def test_text_embedding_ignores_padding(pool, causal):
  c = _small()
  c.text.update(pool=pool, causal=causal)
  model, params = _init(c, context=12)
  ids = jnp.array([[5, 9, 7, 3, 0, 0, 0, 0], [6, 3, 0, 0, 0, 0, 0, 0]], jnp.int32)
  longer = jnp.pad(ids, ((0, 0), (0, 4)))
  a = model.apply({"params": params}, ids, method=model.encode_text)
  b = model.apply({"params": params}, longer, method=model.encode_text)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


LATERAL_PYRAMID = dict(enabled=True, taps=(1, 3), strides=(4, 8), channels=16, lateral="pixels")


def test_remat_and_scan_keep_the_function():
  base = _small()
  model, params = _init(base)
  images = jax.random.uniform(jax.random.key(3), (2, 32, 32, 3))
  want = model.apply({"params": params}, images, method=model.encode_image)
  remat = _small()
  remat.remat = "dots"
  got = TwoTower(remat).apply({"params": params}, images, method=TwoTower(remat).encode_image)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
  # A hybrid pyramid (pixel laterals) with its gate open: the same function under remat.
  hybrid = _small()
  hybrid.image.pyramid.update(LATERAL_PYRAMID)
  hybrid_model, hybrid_params = _init(hybrid)
  hybrid_params["image"]["pyramid"]["gate"] = jnp.float32(1.0)
  want = hybrid_model.apply({"params": hybrid_params}, images, method=hybrid_model.encode_image)
  hybrid.remat = "dots"
  got = TwoTower(hybrid).apply({"params": hybrid_params}, images,
                               method=TwoTower(hybrid).encode_image)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
  # Scanned blocks: same parameter count, parameters stacked on a leading layers axis.
  scan = _small()
  scan.scan = True
  _, scan_params = _init(scan)
  count = lambda p: sum(x.size for x in jax.tree.leaves(p))
  assert count(scan_params) == count(params)
  stacked = scan_params["image"]["encoder"]["blocks0_3"]["block"]["attn"]["qkv_kernel"]
  assert stacked.shape == (4, 32, 3, 2, 16)


def test_hybrid_pyramid_under_scan_is_the_unscanned_function():
  """Scanned blocks tapped by the pyramid (taps 1 and 3 split the scan in two) with pixel
  laterals: the unscanned model with the same (unstacked) parameters gives the same embedding."""
  from flax import traverse_util

  from rsjax.convert.keymap import unscan_layout

  scanned = _small()
  scanned.image.pyramid.update(LATERAL_PYRAMID)
  scanned.scan = True
  model, params = _init(scanned)
  params["image"]["pyramid"]["gate"] = jnp.float32(1.0)
  flat = traverse_util.flatten_dict(params, sep="/")
  assert any("blocks" in k for k in flat)
  unscanned = _small()
  unscanned.image.pyramid.update(LATERAL_PYRAMID)
  same = traverse_util.unflatten_dict(unscan_layout(flat), sep="/")
  images = jax.random.uniform(jax.random.key(5), (2, 32, 32, 3))
  want = TwoTower(unscanned).apply({"params": same}, images, method=TwoTower(unscanned).encode_image)
  got = model.apply({"params": params}, images, method=model.encode_image)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_hash_codes_are_signs_and_pack_round_trips():
  c = _small()
  c.hashing.bits = 64
  model, params = _init(c)
  images = jax.random.uniform(jax.random.key(4), (5, 32, 32, 3))
  packed = np.asarray(model.apply({"params": params}, images, method=model.hash_image))
  assert packed.dtype == np.uint8 and packed.shape == (5, 8)
  z = jax.random.normal(jax.random.key(5), (7, 64))
  codes = heads.binarize(z)
  assert set(np.unique(np.asarray(codes))) <= {-1.0, 1.0}
  packed = np.asarray(heads.pack_codes(codes))
  np.testing.assert_array_equal(packed, np.packbits(np.asarray(codes) > 0, axis=1))
  np.testing.assert_array_equal(np.asarray(heads.unpack_codes(packed, 64)), np.asarray(codes))
  relaxed = np.asarray(jnp.tanh(2.0 * z))  # beta 2: no float32 saturation at these |z|
  assert np.all(np.abs(relaxed) < 1) and np.all(np.sign(relaxed) == np.asarray(codes))
  with pytest.raises(ValueError, match="hash bits"):
    heads.HashingHead(12).init(jax.random.key(0), jnp.zeros((1, 4)))


def test_hash_beta_schedule_and_position_interpolation():
  assert float(heads.hash_beta(0, 100, 1.0, 10.0)) == 1.0
  assert float(heads.hash_beta(100, 100, 1.0, 10.0)) == 10.0
  pos = np.random.default_rng(0).normal(size=(1 + 16, 8)).astype(np.float32)
  np.testing.assert_array_equal(interpolate_pos_embed(pos, (4, 4)), pos)
  resized = interpolate_pos_embed(pos, (8, 8))
  assert resized.shape == (65, 8)
  np.testing.assert_array_equal(resized[0], pos[0])


def test_bfloat16_compute_keeps_float32_parameters():
  c = _small()
  c.dtype = "bfloat16"
  model, params = _init(c)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  images = jax.random.uniform(jax.random.key(6), (2, 32, 32, 3))
  tokens = model.apply({"params": params}, images, method=lambda m, x: m.image(x)["tokens"])
  assert tokens.dtype == jnp.bfloat16
  emb = model.apply({"params": params}, images, method=model.encode_image)
  assert emb.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(emb)))
  reference = TwoTower(_small()).apply({"params": params}, images, method=model.encode_image)
  assert float(jnp.abs(emb - reference).max()) < 0.1  # same function, bf16 rounding only


@pytest.mark.parametrize("factor", [2, 4])
def test_pyramid_upsample_equals_flax_conv_transpose(factor):
  """The matmul upsampling keeps nn.ConvTranspose's parameters and outputs (and so checkpoints)."""
  from rsjax.models.pyramid import PatchUpsample

  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 8))
  ours = PatchUpsample(6, factor)
  params = nn.meta.unbox(ours.init(jax.random.key(1), x))
  params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.key(2), p.shape), params)
  flax_conv = nn.ConvTranspose(6, (factor, factor), strides=(factor, factor))
  assert jax.tree.map(jnp.shape, flax_conv.init(jax.random.key(1), x)) == \
      jax.tree.map(jnp.shape, params)
  want = flax_conv.apply(params, x)
  got = ours.apply(params, x)
  assert got.shape == (2, 3 * factor, 5 * factor, 6)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
