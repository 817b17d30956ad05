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
