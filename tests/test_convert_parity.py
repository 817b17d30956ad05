"""open_clip models with random weights, saved in the formats found in the wild, converted with
`rsjax convert` and loaded: rsjax's image and text embeddings match open_clip's on real images and
captions (max abs difference <= 1e-4 in float32, cosine >= 0.99999), with open_clip's
preprocessing reproduced; exporting the converted weights gives back the original tensors."""

import json
import pathlib

import flax
import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from rsjax import cli, convert
from rsjax.data.clip_preprocess import clip_normalize, clip_pixels
from rsjax.data.clip_tokenizer import ClipTokenizer
from rsjax.pixels import normalize_images
from rsjax.models.two_tower import TwoTower
from torchvision_shim import import_open_clip

# open_clip name -> (file format it is saved in, number of images and captions compared, whether
# rsjax runs the blocks with nn.scan: the same numbers, compiled once instead of per layer).
CASES = {
    "ViT-B-32": ("safetensors", 3, False),
    "ViT-B-16": ("open_clip_training_checkpoint", 3, True),
    "ViT-L-14": ("state_dict_bin", 2, True),  # 428M parameters in fp32 on 2 cores: keep it short
    "ViT-B-32-quickgelu": ("torchscript", 3, False),
}
MAX_ABS, MIN_COS = 1e-4, 0.99999


def _save(model, fmt: str, folder: pathlib.Path) -> pathlib.Path:
  import torch

  state = model.state_dict()
  if fmt == "safetensors":
    from safetensors.torch import save_file
    path = folder / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
  elif fmt == "open_clip_training_checkpoint":  # open_clip's train.py layout, DDP-prefixed
    path = folder / "epoch_3.pt"
    torch.save({"epoch": 3, "name": "rs", "state_dict": {f"module.{k}": v for k, v in state.items()}},
               path)
  elif fmt == "state_dict_bin":
    path = folder / "open_clip_pytorch_model.bin"
    torch.save(state, path)
  elif fmt == "torchscript":  # the form of OpenAI's original release files
    path = folder / "ViT-B-32.pt"
    with torch.no_grad():
      traced = torch.jit.trace(model, (torch.zeros(1, 3, 224, 224), torch.zeros(1, 77, dtype=torch.long)),
                               strict=False, check_trace=False)
    traced.save(str(path))
  return path


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
  """(name, open_clip model, its preprocess, converted.json, rsjax model, flat params)."""
  open_clip = import_open_clip()
  import torch

  name = request.param
  fmt, _, scan = CASES[name]
  torch.manual_seed(0)
  model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
  model.eval()
  folder = tmp_path_factory.mktemp(name)
  path = _save(model, fmt, folder)
  out = folder / "converted"
  assert cli.main(["convert", "--checkpoint", str(path), "--out", str(out)]) == 0
  info, cfg, flat = convert.load_converted(str(out))
  run_cfg = ml_collections.ConfigDict(info["model"])
  run_cfg.scan = scan
  run_params = (convert.scan_layout(flat, convert.parameter_shapes(run_cfg, info["image_size"]))
                if scan else flat)
  yield name, model, preprocess, info, TwoTower(run_cfg), run_params, flat


def _samples(shared_data: pathlib.Path, n: int):
  rows = [json.loads(line) for line in open(shared_data / "rsicd_samples" / "captions.jsonl")]
  images = [shared_data / "rsicd_samples" / r["image"] for r in rows[:n - 1]]
  scene = [json.loads(line) for line in open(shared_data / "rsscn7" / "captions.jsonl")][0]
  images.append(shared_data / "rsscn7" / scene["image"])  # 400x400: exercises resize + crop
  # The last caption ends in '!', CLIP's id 0 (also the padding id): pooling must not mistake it.
  captions = [r["captions"][0] for r in rows[:n - 1]] + [rows[n - 1]["captions"][1] + "!"]
  return images, captions


def test_architecture_inferred_from_shapes(case):
  name, model, _, info, _, _, flat = case
  assert info["arch"] == name
  assert info["model"]["activation"] == ("quick_gelu" if "quickgelu" in name else "gelu")
  n_torch = sum(p.numel() for p in model.parameters())
  assert sum(v.size for v in flat.values()) == n_torch
  assert info["accounting"]["placed"] == len(flat)
  kind = info["source"]["kind"]
  if CASES[name][0] == "open_clip_training_checkpoint":
    assert kind == ("pickle under 'state_dict' (also held, not weights: epoch, name), "
                    "keys prefixed 'module.'")
  else:
    assert kind == {"safetensors": "safetensors", "state_dict_bin": "pickle",
                    "torchscript": "torchscript"}[CASES[name][0]]


def test_image_embeddings_match_open_clip(case, shared_data):
  import torch

  name, model, preprocess, info, rs_model, flat, _ = case
  images, _ = _samples(shared_data, CASES[name][1])
  pixels = np.stack([clip_pixels(p, info["image_size"]) for p in images])
  reference_input = torch.stack([preprocess(Image.open(p)) for p in images])
  # Our preprocessing gives open_clip's model input, up to float rounding.
  np.testing.assert_allclose(clip_normalize(pixels), reference_input.numpy().transpose(0, 2, 3, 1),
                             atol=1e-5, rtol=0)
  with torch.no_grad():
    expected = model.encode_image(reference_input, normalize=True).numpy()
  encode = jax.jit(lambda p, x: rs_model.apply({"params": p}, normalize_images(x),
                                               method=rs_model.encode_image))
  got = np.asarray(encode(flax.traverse_util.unflatten_dict(flat, sep="/"), pixels))
  assert np.abs(got - expected).max() <= MAX_ABS
  assert (got * expected).sum(-1).min() >= MIN_COS


def test_text_embeddings_match_open_clip(case, shared_data):
  import torch

  name, model, _, _, rs_model, flat, _ = case
  _, captions = _samples(shared_data, CASES[name][1])
  open_clip = import_open_clip()
  with torch.no_grad():
    expected = model.encode_text(open_clip.get_tokenizer(name)(captions), normalize=True).numpy()
  encode = jax.jit(lambda p, x: rs_model.apply({"params": p}, x, method=rs_model.encode_text))
  got = np.asarray(encode(flax.traverse_util.unflatten_dict(flat, sep="/"), ClipTokenizer().encode(captions)))
  assert np.abs(got - expected).max() <= MAX_ABS
  assert (got * expected).sum(-1).min() >= MIN_COS


def test_export_gives_back_the_original_tensors(case):
  _, model, _, info, _, _, flat = case
  state = convert.to_open_clip(flat, ml_collections.ConfigDict(info["model"]))
  original = {k: v.detach().numpy() for k, v in model.state_dict().items() if k != "attn_mask"}
  assert sorted(state) == sorted(original)
  for key, value in original.items():
    assert state[key].shape == value.shape, key
    np.testing.assert_array_equal(state[key], value, err_msg=key)
