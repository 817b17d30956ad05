"""Conversion's key accounting and errors, starting a run from converted weights
(`init.checkpoint`), fine-tuning with `rsjax train` on the RSICD samples, and exporting the
fine-tuned model back to open_clip (it reproduces rsjax's embeddings).

A small CLIP registered with open_clip keeps this fast; the ViT-B/L parity tests are in
test_convert_parity.py.
"""

import json
import pathlib

import flax
import jax
import numpy as np
import pytest

from rsjax import cli, convert, parallel
from rsjax.config import load_config
from rsjax.data.clip_preprocess import clip_pixels
from rsjax.data.clip_tokenizer import ClipTokenizer
from rsjax.pixels import normalize_images
from rsjax.models.two_tower import TwoTower
from torchvision_shim import import_open_clip

REPO = pathlib.Path(__file__).resolve().parents[1]
FINETUNE = str(REPO / "configs" / "finetune_clip_rsicd.py")
TINY = "rsjax-test-tiny-clip"
TINY_CONFIG = {"embed_dim": 64,
               "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "patch_size": 16},
               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2,
                            "layers": 2}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(folder, open_clip model, its state dict as numpy) of a small random open_clip CLIP."""
  open_clip = import_open_clip()
  import torch

  folder = tmp_path_factory.mktemp("tiny")
  config_file = folder / f"{TINY}.json"
  config_file.write_text(json.dumps(TINY_CONFIG))
  open_clip.add_model_config(str(config_file))
  torch.manual_seed(0)
  model = open_clip.create_model(TINY, pretrained=None).eval()
  return folder, model, {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _save(state: dict, path: pathlib.Path) -> str:
  import torch
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, path)
  return str(path)


@pytest.fixture(scope="module")
def converted(tiny):
  folder, _, state = tiny
  out = folder / "converted"
  convert.convert_file(_save(state, folder / "tiny.pt"), str(out))
  return out


def test_custom_architecture_inferred(converted, tiny):
  info = convert.read_info(str(converted))
  assert info["arch"] == "custom" and info["image_size"] == 64
  m = info["model"]
  assert (m["image"]["width"], m["image"]["depth"], m["image"]["heads"], m["image"]["patch_size"]) == (128, 2, 2, 16)
  assert (m["text"]["width"], m["text"]["depth"], m["text"]["heads"], m["embed_dim"]) == (128, 2, 2, 64)
  assert m["text"]["pool"] == "argmax" and m["image"]["input_norm"] == "clip"
  assert info["accounting"]["keys"] == len(tiny[2]) and info["tokenizer"]["kind"] == "clip_bpe"


def test_every_bad_key_is_named_and_nothing_written(tiny, tmp_path, capsys):
  _, _, state = tiny
  bad = dict(state)
  bad["visual.transformer.resblocks.0.ls_1.gamma"] = np.ones(128, np.float32)  # layer scale
  bad["text_decoder.weight"] = np.ones((4, 4), np.float32)
  bad["transformer.resblocks.1.mlp.c_fc.bias"] = np.ones(100, np.float32)
  del bad["ln_final.weight"]
  out = tmp_path / "out"
  rc = cli.main(["convert", "--checkpoint", _save(bad, tmp_path / "bad.pt"), "--out", str(out)])
  err = capsys.readouterr().err
  assert rc == 2
  for named in ("visual.transformer.resblocks.0.ls_1.gamma", "text_decoder.weight",
                "transformer.resblocks.1.mlp.c_fc.bias: checkpoint (100,), model needs (512,)",
                "text/ln_final/LayerNorm_0/scale"):
    assert named in err
  assert not out.exists()


def test_openai_metadata_means_quick_gelu_and_is_checked(tiny, tmp_path):
  _, _, state = tiny
  meta = dict(state, input_resolution=np.array(64), context_length=np.array(77),
              vocab_size=np.array(49408))
  info = convert.convert_file(_save(meta, tmp_path / "openai.pt"), str(tmp_path / "ok"))
  assert info["model"]["activation"] == "quick_gelu"
  assert info["accounting"]["metadata"] == {"input_resolution": 64, "context_length": 77,
                                            "vocab_size": 49408}
  meta["input_resolution"] = np.array(224)
  with pytest.raises(convert.ConversionError, match="input_resolution: checkpoint says 224"):
    convert.convert_file(_save(meta, tmp_path / "wrong.pt"), str(tmp_path / "no"))


def test_wrong_arch_names_the_misfits(tiny, tmp_path):
  _, _, state = tiny
  with pytest.raises(convert.ConversionError) as e:
    convert.convert_file(_save(state, tmp_path / "t.pt"), str(tmp_path / "o"), arch="ViT-B-32")
  assert "visual.conv1.weight: checkpoint (128, 3, 16, 16), model needs (768, 3, 32, 32)" in str(e.value)
  # Parameters no key fills, all of them (ViT-B-32 has 12 blocks per tower, the file 2).
  assert "image/encoder/block11/mlp/fc2/kernel (3072, 768)" in str(e.value)
  assert "text/encoder/block11/attn/qkv_kernel" in str(e.value)


def _abstract_params(config):
  from rsjax.optim import make_optimizer
  from rsjax.state import create_model, state_layout
  mesh = parallel.make_mesh(config)
  abstract, _ = state_layout(create_model(config), make_optimizer(config.train), config, mesh)
  return abstract.params


@pytest.mark.parametrize("scan", [False, True])
def test_init_checkpoint_loads_the_converted_weights(converted, scan):
  config = load_config(f"{FINETUNE}:init={converted}", [f"model.scan={scan}"])
  params = convert.load_init_params(str(converted), config, _abstract_params(config), log=print)
  flat = flax.traverse_util.flatten_dict(jax.device_get(params), sep="/")
  _, _, reference = convert.load_converted(str(converted))
  assert sum(v.size for v in flat.values()) == sum(v.size for v in reference.values())
  np.testing.assert_array_equal(convert.unscan_layout(flat)["text/token_embed"],
                                reference["text/token_embed"])
  if scan:
    assert flat["image/encoder/blocks0_1/block/attn/qkv_kernel"].shape == (2, 128, 3, 2, 64)
  for key, value in convert.unscan_layout(flat).items():
    np.testing.assert_array_equal(value, reference[key], err_msg=key)


def test_init_checkpoint_refuses_a_different_model(converted):
  config = load_config(f"{FINETUNE}:arch=ViT-B-32", [f"init.checkpoint={converted}"])
  with pytest.raises(convert.ConversionError) as e:
    convert.load_init_params(str(converted), config, _abstract_params(config), log=print)
  assert "model.image.width: checkpoint 128, config 768" in str(e.value)
  assert "image/patch_embed/kernel: checkpoint (16, 16, 3, 128), model (32, 32, 3, 768)" in str(e.value)


def test_finetune_then_export_to_open_clip(converted, tiny, shared_data, tmp_path):
  import torch
  from safetensors.torch import load_file

  open_clip = import_open_clip()
  workdir = tmp_path / "run"
  spec = f"{FINETUNE}:init={converted},path={shared_data / 'rsicd_samples'},format=captions_jsonl,runlocal"
  # A random small CLIP learns at a higher rate than the recipe's 1e-5 for pretrained weights.
  overrides = ["train.steps=10", "train.batch_size=16", "train.learning_rate=5e-4",
               "train.warmup_steps=2", "train.checkpoint_every=0"]
  args = ["--config", spec, "--workdir", str(workdir)] + [a for o in overrides for a in ("--set", o)]
  assert cli.main(["train"] + args) == 0
  losses = [r["loss"] for r in map(json.loads, open(workdir / "metrics.jsonl")) if "loss" in r]
  assert len(losses) == 10
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses

  out = tmp_path / "export" / "rs-finetuned.safetensors"
  assert cli.main(["export", "--format", "open_clip", "--out", str(out)] + args[:4]
                  + [a for o in overrides for a in ("--set", o)]) == 0
  open_clip.add_model_config(str(out.with_suffix(".json")))
  model = open_clip.create_model("rs-finetuned", pretrained=None).eval()
  model.load_state_dict(load_file(str(out)), strict=True)

  config = load_config(spec, overrides)
  from rsjax.export import params_from_run
  flat, step = params_from_run(config, str(workdir))
  assert step == 10
  _, _, converted_flat = convert.load_converted(str(converted))
  assert not np.array_equal(flat["image/proj/proj/kernel"], converted_flat["image/proj/proj/kernel"])
  rows = [json.loads(line) for line in open(shared_data / "rsicd_samples" / "captions.jsonl")][:4]
  pixels = np.stack([clip_pixels(shared_data / "rsicd_samples" / r["image"], 64) for r in rows])
  captions = [r["captions"][0] for r in rows]
  rs_model = TwoTower(config.model)
  params = flax.traverse_util.unflatten_dict(flat, sep="/")
  got_img = np.asarray(rs_model.apply({"params": params}, normalize_images(pixels),
                                      method=rs_model.encode_image))
  got_txt = np.asarray(rs_model.apply({"params": params}, ClipTokenizer().encode(captions),
                                      method=rs_model.encode_text))
  with torch.no_grad():
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    images = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std
    want_img = model.encode_image(images, normalize=True).numpy()
    want_txt = model.encode_text(open_clip.get_tokenizer("ViT-B-32")(captions), normalize=True).numpy()
  for got, want in ((got_img, want_img), (got_txt, want_txt)):
    assert np.abs(got - want).max() <= 1e-4
    assert (got * want).sum(-1).min() >= 0.99999


def test_export_of_a_converted_folder_loads_strictly_in_open_clip(converted, tiny, tmp_path):
  import torch

  open_clip = import_open_clip()
  _, original, _ = tiny
  out = tmp_path / "rs-tiny-export.pt"
  assert cli.main(["export", "--format", "open_clip", "--converted", str(converted),
                   "--out", str(out)]) == 0
  assert json.loads(out.with_suffix(".json").read_text()) == {
      **TINY_CONFIG, "quick_gelu": False,
      "vision_cfg": {**TINY_CONFIG["vision_cfg"], "head_width": 64, "mlp_ratio": 4.0},
      "text_cfg": {**TINY_CONFIG["text_cfg"], "mlp_ratio": 4.0}}
  open_clip.add_model_config(str(out.with_suffix(".json")))
  model = open_clip.create_model("rs-tiny-export", pretrained=None)
  model.load_state_dict(torch.load(out, weights_only=True), strict=True)
  for key, value in original.state_dict().items():
    assert torch.equal(model.state_dict()[key], value), key


def test_export_refuses_what_open_clip_cannot_express(converted, tmp_path):
  _, cfg, flat = convert.load_converted(str(converted))
  cfg.image.pool = "gap"
  cfg.hashing.bits = 64
  flat["image_hash/hash/kernel"] = np.zeros((64, 64), np.float32)
  with pytest.raises(convert.ConversionError) as e:
    convert.to_open_clip(flat, cfg)
  for named in ("model.image.pool is 'gap'", "model.hashing.bits is 64", "image_hash/hash/kernel"):
    assert named in str(e.value)


@pytest.mark.parametrize("dataset", ["rsicd", "rsitmd", "ucm"])
def test_finetune_configs_load_for_registry_and_converted_models(dataset, converted):
  path = str(REPO / "configs" / f"finetune_clip_{dataset}.py")
  c = load_config(f"{path}:arch=ViT-L-14", [f"init.checkpoint={converted}"])
  assert (c.model.image.width, c.data.image_size, c.data.tokenizer_path) == (1024, 224, "clip_bpe")
  assert c.model.text.pool == "argmax" and c.model.image.input_norm == "clip"
  c = load_config(f"{path}:init={converted}")
  assert c.init.checkpoint == str(converted) and c.data.image_size == 64
  assert c.model.to_dict() == convert.read_info(str(converted))["model"]


def test_init_checkpoint_written_before_a_model_key_existed(converted, tmp_path):
  import shutil

  old = tmp_path / "old"
  shutil.copytree(converted, old)
  info = json.loads((old / "converted.json").read_text())
  del info["model"]["logit_bias"]  # stands for a key added to the model config later
  (old / "converted.json").write_text(json.dumps(info))
  config = load_config(f"{FINETUNE}:init={converted}", [f"init.checkpoint={old}"])
  params = convert.load_init_params(str(old), config, _abstract_params(config), log=print)
  assert len(jax.tree.leaves(params)) == info["accounting"]["placed"]
