"""LoRA and bottleneck adapters in the models (rsjax/models/peft.py): the identity at
initialisation, live once trained, LoRA merged into plain weights, and the merged export loaded
strictly by open_clip."""

import json

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_config
from rsjax import convert
from rsjax.config import ConfigError
from rsjax.errors import InputError
from rsjax.export import merge_for_export
from rsjax.models import peft
from rsjax.models.two_tower import TwoTower
from torchvision_shim import import_open_clip

ALL_TARGETS = "model.lora.targets=('qkv', 'out', 'fc1', 'fc2')"
RNG = np.random.default_rng(0)
IMAGES = jnp.asarray(RNG.uniform(-1, 1, (4, 32, 32, 3)), jnp.float32)
TOKENS = jnp.asarray(np.concatenate([RNG.integers(4, 200, (4, 10)), np.full((4, 1), 3),
                                     np.zeros((4, 13), int)], 1), jnp.int32)


def _embed(model, params, images=IMAGES, tokens=TOKENS):
  return (np.asarray(model.apply({"params": params}, images, method=model.encode_image)),
          np.asarray(model.apply({"params": params}, tokens, method=model.encode_text)))


def _pair(*overrides):
  """(model without PEFT, its params, model with the overrides, its params sharing the base)."""
  base_config = tiny_config(*[o for o in overrides if o.startswith("model.scan")])
  config = tiny_config(*overrides)
  base, model = TwoTower(base_config.model), TwoTower(config.model)
  base_params = nn.meta.unbox(base.init(jax.random.key(0), IMAGES, TOKENS)["params"])
  params = flax.traverse_util.flatten_dict(
      nn.meta.unbox(model.init(jax.random.key(1), IMAGES, TOKENS)["params"]), sep="/")
  flat_base = flax.traverse_util.flatten_dict(base_params, sep="/")
  assert set(flat_base) == {k for k in params if not peft.is_peft_param(k)}
  params.update(flat_base)
  return base, base_params, model, flax.traverse_util.unflatten_dict(params, sep="/"), config


def _perturbed(params, seed=2):
  rng = np.random.default_rng(seed)
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  return flax.traverse_util.unflatten_dict(
      {k: (jnp.asarray(rng.normal(0, 0.05, v.shape), v.dtype) if peft.is_peft_param(k) else v)
       for k, v in flat.items()}, sep="/")


OPTIONS = {
    "lora_all": ("model.lora.rank=4", ALL_TARGETS),
    "lora_all_scan": ("model.lora.rank=4", ALL_TARGETS, "model.scan=True"),
    "lora_text_only": ("model.lora.rank=2", "model.lora.towers=('text',)"),
    "adapter": ("model.adapter.dim=8",),
    "adapter_scan": ("model.adapter.dim=8", "model.scan=True"),
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_at_init_the_outputs_are_exactly_unchanged_and_once_trained_they_move(option):
  base, base_params, model, params, _ = _pair(*OPTIONS[option])
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  assert any(peft.is_peft_param(k) for k in flat)
  for a, b in zip(_embed(base, base_params), _embed(model, params)):
    np.testing.assert_array_equal(a, b)  # bit for bit
  moved = _embed(model, _perturbed(params))
  assert not np.allclose(moved[1], _embed(base, base_params)[1])

  def loss(p):
    image, text = model.apply({"params": p}, IMAGES, method=model.encode_image), \
        model.apply({"params": p}, TOKENS, method=model.encode_text)
    return jnp.sum(image @ text.T)

  grads = flax.traverse_util.flatten_dict(jax.grad(loss)(_perturbed(params)), sep="/")
  for key, grad in grads.items():
    if peft.is_peft_param(key):
      assert float(jnp.max(jnp.abs(grad))) > 0, key


@pytest.mark.parametrize("scan", [False, True])
def test_merged_lora_computes_what_the_unmerged_model_does(scan):
  _, _, model, params, config = _pair("model.lora.rank=4", ALL_TARGETS, f"model.scan={scan}")
  params = _perturbed(params)
  merged, merged_config = peft.merge_lora(jax.device_get(params), config.model)
  assert merged_config.lora.rank == 0
  flat = flax.traverse_util.flatten_dict(merged, sep="/")
  assert not any(peft.is_peft_param(k) for k in flat)
  plain = TwoTower(merged_config)
  for a, b in zip(_embed(model, params), _embed(plain, merged)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_adapters_cannot_be_merged():
  _, _, _, params, config = _pair("model.adapter.dim=8")
  with pytest.raises(InputError, match="bottleneck adapter adds layers open_clip does not have"):
    peft.merge_lora(jax.device_get(params), config.model)


@pytest.mark.parametrize("override, message", [
    ("model.lora.targets=('qk',)", "'model.lora.targets': unknown 'qk'"),
    ("model.lora.towers=('audio',)", "'model.lora.towers': unknown 'audio'"),
    ("model.lora.rank=-1", "'model.lora.rank': must be an integer >= 0"),
    ("model.adapter.dim=-2", "'model.adapter.dim': must be an integer >= 0"),
])
def test_bad_settings_name_their_key(override, message):
  config = tiny_config(override)
  with pytest.raises(ConfigError, match=message):
    TwoTower(config.model).init(jax.random.key(0), IMAGES, TOKENS)


TINY_CLIP = {"embed_dim": 64,
             "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "patch_size": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2,
                          "layers": 2}}


def test_a_lora_model_exported_loads_strictly_in_open_clip(tmp_path):
  import torch
  from safetensors.torch import load_file

  from rsjax.data.clip_tokenizer import ClipTokenizer

  open_clip = import_open_clip()
  (tmp_path / "rs-peft-src.json").write_text(json.dumps(TINY_CLIP))
  open_clip.add_model_config(str(tmp_path / "rs-peft-src.json"))
  torch.manual_seed(0)
  source = open_clip.create_model("rs-peft-src", pretrained=None).eval()
  torch.save(source.state_dict(), tmp_path / "src.pt")
  convert.convert_file(str(tmp_path / "src.pt"), str(tmp_path / "converted"))
  _, model_config, flat = convert.load_converted(str(tmp_path / "converted"))
  with model_config.unlocked():
    model_config.lora.update(rank=4, targets=("qkv", "out", "fc1", "fc2"))
  model = TwoTower(model_config)
  images = jnp.asarray(RNG.uniform(-1, 1, (2, 64, 64, 3)), jnp.float32)
  tokens = jnp.asarray(ClipTokenizer().encode(["a harbour with ships", "a green forest"]))
  fresh = flax.traverse_util.flatten_dict(
      nn.meta.unbox(model.init(jax.random.key(0), images, tokens)["params"]), sep="/")
  params = _perturbed(flax.traverse_util.unflatten_dict({**fresh, **flat}, sep="/"))
  want_img, want_txt = _embed(model, params, images, tokens)

  merged, merged_config = merge_for_export(
      {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()},
      model_config, log=lambda *_: None)
  out = tmp_path / "export" / "rs-peft.safetensors"
  convert.save_open_clip(convert.to_open_clip(merged, merged_config), merged_config, 64, str(out),
                         log=lambda *_: None)
  open_clip.add_model_config(str(out.with_suffix(".json")))
  exported = open_clip.create_model("rs-peft", pretrained=None).eval()
  exported.load_state_dict(load_file(str(out)), strict=True)
  with torch.no_grad():
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    pixels = (torch.from_numpy(np.array(images)).permute(0, 3, 1, 2) + 1) / 2
    got_img = exported.encode_image((pixels - mean) / std, normalize=True).numpy()
    got_txt = exported.encode_text(torch.from_numpy(np.array(tokens)).long(),
                                   normalize=True).numpy()
  np.testing.assert_allclose(got_img, want_img, atol=1e-4)
  np.testing.assert_allclose(got_txt, want_txt, atol=1e-4)


@pytest.mark.parametrize("overrides", [
    ("model.lora.targets=('qkv',)",), ("model.lora.targets=('out',)",),
    ("model.lora.targets=('fc1',)",), ("model.lora.targets=('fc2',)",),
    (ALL_TARGETS, "model.adapter.dim=8", "model.scan=True", "model.remat=dots"),
], ids=["qkv", "out", "fc1", "fc2", "all_adapter_scan_remat"])
def test_each_target_alone_is_exactly_the_identity_at_init(overrides):
  base, base_params, model, params, config = _pair("model.lora.rank=4", *overrides)
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  lora = sorted(k.rsplit("/", 1)[1] for k in flat if peft.is_lora_param(k))
  targets = tuple(config.model.lora.targets)
  assert sorted(set(lora)) == sorted(f"{t}_lora_{ab}" for t in targets for ab in "ab")
  for a, b in zip(_embed(base, base_params), _embed(model, params)):
    np.testing.assert_array_equal(a, b)


def test_scanned_lora_gets_a_gradient_in_every_layer():
  _, _, model, params, _ = _pair("model.lora.rank=4", ALL_TARGETS, "model.adapter.dim=8",
                                 "model.scan=True")

  def loss(p):
    return jnp.sum(model.apply({"params": p}, IMAGES, method=model.encode_image)[:, :3]) + \
        jnp.sum(model.apply({"params": p}, TOKENS, method=model.encode_text)[:, :3])

  grads = flax.traverse_util.flatten_dict(jax.grad(loss)(_perturbed(params)), sep="/")
  peft_grads = {k: np.asarray(g) for k, g in grads.items() if peft.is_peft_param(k)}
  assert len(peft_grads) == 2 * (8 + 4)  # two towers, one stacked segment each
  for key, g in peft_grads.items():
    assert np.abs(g).reshape(g.shape[0], -1).max(1).min() > 0, key


def test_peft_parameter_names_and_count():
  assert peft.is_peft_param("image/encoder/blocks0_3/block/attn/qkv_lora_a")
  assert peft.is_peft_param("text/encoder/block1/adapter/down/kernel")
  assert peft.is_peft_param("text/encoder/block1/mlp/fc2_lora_b")
  for path in ("text/encoder/block1/attn/qkv_kernel", "text/encoder/block1/mlp/fc1/kernel",
               "head/logit_scale", "image/pyramid/gate"):
    assert not peft.is_peft_param(path)
  _, base_params, _, params, config = _pair("model.lora.rank=2", "model.lora.towers=('text',)",
                                            "model.lora.targets=('qkv', 'fc2')")
  n = peft.count(params)
  t = config.model.text
  hidden = int(t.width * t.mlp_ratio)
  per_block = (t.width * 2 + 2 * 3 * t.width) + (hidden * 2 + 2 * t.width)  # qkv A, B; fc2 A, B
  assert n == {"peft": t.depth * per_block, "base": peft.count(base_params)["base"]}
  assert peft.settings_for(config.model, "image") == peft.OFF


def test_export_of_a_scanned_lora_model_built_directly(tmp_path):
  """A CLIP-layout model built from a config (no conversion), scanned, LoRA on every target."""
  import torch
  from safetensors.torch import load_file

  open_clip = import_open_clip()
  overrides = ("model.lora.rank=4", ALL_TARGETS, "model.scan=True", "model.lora.alpha=8.0",
               "model.image.input_norm=clip", "model.text.pool=argmax",
               "model.text.causal=True", "model.image.stem=patch", "model.image.pool=cls")
  config = tiny_config(*overrides)
  model = TwoTower(config.model)
  params = _perturbed(nn.meta.unbox(model.init(jax.random.key(1), IMAGES, TOKENS)["params"]))
  want = _embed(model, params)
  flat = {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}
  merged, merged_config = merge_for_export(flat, config.model, log=lambda *_: None)
  out = tmp_path / "rs-peft-scan.safetensors"
  convert.save_open_clip(convert.to_open_clip(merged, merged_config), merged_config,
                         config.data.image_size, str(out), log=lambda *_: None)
  open_clip.add_model_config(str(out.with_suffix(".json")))
  exported = open_clip.create_model("rs-peft-scan", pretrained=None).eval()
  state = load_file(str(out))
  assert set(state) == set(exported.state_dict())
  exported.load_state_dict(state, strict=True)
  with torch.no_grad():
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    pixels = (torch.from_numpy(np.array(IMAGES)).permute(0, 3, 1, 2) + 1) / 2
    got = (exported.encode_image((pixels - mean) / std, normalize=True).numpy(),
           exported.encode_text(torch.from_numpy(np.array(TOKENS)).long(), normalize=True).numpy())
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-5)


def test_export_refuses_adapters_before_writing_anything(tmp_path):
  from rsjax.export import export

  config = tiny_config("model.adapter.dim=8")
  out = tmp_path / "x" / "model.safetensors"
  with pytest.raises(InputError, match="config key 'model.adapter.dim'") as e:
    export("open_clip", str(out), config=config, workdir=str(tmp_path / "no-such-run"))
  assert e.value.exit_code == 2 and not (tmp_path / "x").exists()
  _, _, _, params, _ = _pair("model.adapter.dim=8")
  flat = {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}
  with pytest.raises(InputError, match="bottleneck adapter"):  # the parameters, whatever the config
    merge_for_export(flat, tiny_config().model, log=lambda *_: None)


def test_adapter_towers_and_validate_name_the_key():
  config = tiny_config("model.adapter.towers=('txt',)")
  with pytest.raises(ConfigError, match="'model.adapter.towers': unknown 'txt'"):
    peft.validate(config.model)
  config = tiny_config("model.lora.targets=('qkv', 'qk')")
  with pytest.raises(ConfigError, match=r"unknown 'qk' \(choose from fc1, fc2, out, qkv\)"):
    peft.validate(config.model)
