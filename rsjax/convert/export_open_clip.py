"""The export direction: rsjax parameters -> an open_clip state dict plus open_clip's model-config
JSON, with the same key table as the import run backwards (rsjax.convert.keymap).
"""

from __future__ import annotations

import json
import os

import numpy as np

from rsjax.convert.errors import ConversionError, listed
from rsjax.convert.infer import flat_config
from rsjax.convert.keymap import to_torch_layout, torch_key, unscan_layout
from rsjax.convert.readers import import_torch

# Model settings open_clip's CLIP cannot express, with the value it needs.
_OPEN_CLIP_NEEDS = {
    "image.stem": "patch", "image.pool": "cls", "image.input_norm": "clip",
    "image.pyramid.enabled": False, "text.causal": True, "projection": "linear",
    "hashing.bits": 0,
}


def open_clip_config(model_cfg, image_size: int) -> dict:
  """open_clip's model-config JSON (as in open_clip/model_configs/*.json) for an rsjax CLIP."""
  c = model_cfg
  return {
      "embed_dim": c.embed_dim,
      "quick_gelu": c.activation == "quick_gelu",
      "vision_cfg": {"image_size": image_size, "layers": c.image.depth, "width": c.image.width,
                     "head_width": c.image.width // c.image.heads, "mlp_ratio": c.image.mlp_ratio,
                     "patch_size": c.image.patch_size},
      "text_cfg": {"context_length": c.text.context_length, "vocab_size": c.text.vocab_size,
                   "width": c.text.width, "heads": c.text.heads, "layers": c.text.depth,
                   "mlp_ratio": c.text.mlp_ratio},
  }


def to_open_clip(flat: dict[str, np.ndarray], model_cfg) -> dict[str, np.ndarray]:
  """rsjax flat params -> open_clip state dict (numpy float32). Raises ConversionError naming
  every setting open_clip cannot express and every parameter without an open_clip tensor."""
  settings = flat_config(model_cfg.to_dict())
  problems = [f"model.{k} is {settings.get(k)!r}; open_clip needs {v!r}"
              for k, v in _OPEN_CLIP_NEEDS.items() if settings.get(k) != v]
  if settings.get("activation") not in ("gelu", "quick_gelu"):
    problems.append(f"model.activation is {settings.get('activation')!r}; open_clip has gelu "
                    "and quick_gelu")
  if settings.get("text.pool") not in ("argmax", "eot"):
    problems.append(f"model.text.pool is {settings.get('text.pool')!r}; open_clip pools the "
                    "end-of-text token (argmax)")
  flat = unscan_layout(flat)
  state, unmapped = {}, []
  for path, value in sorted(flat.items()):
    target = torch_key(path)
    if target is None:
      unmapped.append(f"{path} {tuple(value.shape)}")
      continue
    key, kind = target
    state[key] = np.array(to_torch_layout(kind, np.asarray(value, np.float32)), order="C")
  if unmapped:
    problems.append("parameters open_clip has no tensor for:" + listed(unmapped))
  if problems:
    raise ConversionError("cannot export to open_clip:" + listed(problems))
  return state


WEIGHT_EXTENSIONS = (".safetensors", ".pt", ".pth", ".bin")


def check_weights_path(out: str) -> None:
  """Refuses an output name whose extension names no weights format, before any work."""
  ext = os.path.splitext(out)[1]
  if ext not in WEIGHT_EXTENSIONS:
    raise ConversionError(f"{out}: unknown weights format {ext!r} (name the file .safetensors, "
                          ".pt or .bin)")


def save_open_clip(state: dict[str, np.ndarray], model_cfg, image_size: int, out: str,
                   log=print) -> tuple[str, str]:
  """Writes the state dict (.safetensors with numpy; .pt/.bin with torch) and, beside it,
  NAME.json in open_clip's model-config format. Returns (weights path, config path)."""
  out = os.path.abspath(out)
  check_weights_path(out)
  stem, ext = os.path.splitext(out)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  if ext == ".safetensors":
    from safetensors.numpy import save_file  # optional dependency, only for this format
    save_file(state, out)
  elif ext in (".pt", ".pth", ".bin"):
    torch = import_torch(out)
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, out)
  else:  # check_weights_path admits no other extension
    raise AssertionError(ext)
  config_path = stem + ".json"
  with open(config_path, "w") as f:
    json.dump(open_clip_config(model_cfg, image_size), f, indent=2)
  n = sum(v.size for v in state.values())
  log(f"export: {len(state)} tensors ({n / 1e6:.1f}M parameters) -> {out}; open_clip model "
      f"config -> {config_path} (open_clip.add_model_config('{config_path}'); "
      f"open_clip.create_model('{os.path.basename(stem)}', pretrained='{out}'))")
  return out, config_path
