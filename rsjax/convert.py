"""PyTorch CLIP checkpoints (OpenAI, open_clip, RemoteCLIP, GeoRSCLIP) -> rsjax parameters, and back.

`convert_file(FILE, OUT)` reads a state dict (OpenAI's TorchScript archives, pickled `.pt`/`.bin`
files, `.safetensors`; nested under `state_dict`, prefixed `module.`), infers the architecture from
the tensor shapes (or takes `arch`), places every tensor in the rsjax parameter tree and writes
OUT/params (an orbax checkpoint) and OUT/converted.json (model config, image size, tokenizer spec,
preprocessing, source, key accounting). Every key is accounted for: a key that has no place, a
shape that does not fit, or a parameter that no key fills stops the conversion with all of them
named. `rsjax train --set init.checkpoint=OUT` starts from the converted weights
(`load_init_params`); `to_open_clip` maps rsjax parameters back to an open_clip state dict.

One table (`_TOP`, `_BLOCK`) defines the correspondence for both directions. Layouts:
  conv1.weight [D, 3, p, p]           -> patch_embed/kernel [p, p, 3, D]
  attn.in_proj_weight [3D, D]         -> attn/qkv_kernel [D, 3, H, Dh]   (rows q | k | v, head-major)
  attn.out_proj.weight [D, D] (out,in) -> attn/out_kernel [H, Dh, D]
  mlp.c_fc / c_proj weight [out, in]  -> fc1 / fc2 kernel [in, out]
  visual.proj, text_projection [D, E] -> proj/proj/kernel [D, E] (already x @ W)
torch is needed only to read `.pt`/`.bin` files; `.safetensors` are read with numpy.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from typing import Callable

import numpy as np

FORMAT = "rsjax-converted-clip"
INFO_FILE = "converted.json"
PARAMS_DIR = "params"
TOKENIZER_PATH = "clip_bpe"  # data.tokenizer_path value selecting rsjax's CLIP BPE tokenizer
VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"  # the merges file copied into a converted folder
# Scalars OpenAI's original checkpoints carry besides the weights; checked against the shapes.
OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")
# Non-weights a state dict may hold, each checked rather than placed: OpenAI's scalars, and the
# text tower's causal attention mask (a buffer in TorchScript archives), implied by text.causal.
CHECKED_KEYS = OPENAI_METADATA + ("attn_mask",)


class ConversionError(ValueError):
  """A checkpoint that cannot be converted; the message names every offending key."""


# ---------------------------------------------------------------------------------------------
# The correspondence: torch key -> (rsjax path, layout kind).

_TOP = {
    "visual.conv1.weight": ("image/patch_embed/kernel", "conv"),
    "visual.class_embedding": ("image/cls", "same"),
    "visual.positional_embedding": ("image/pos_embed", "same"),
    "visual.ln_pre.weight": ("image/ln_pre/LayerNorm_0/scale", "same"),
    "visual.ln_pre.bias": ("image/ln_pre/LayerNorm_0/bias", "same"),
    "visual.ln_post.weight": ("image/ln_post/LayerNorm_0/scale", "same"),
    "visual.ln_post.bias": ("image/ln_post/LayerNorm_0/bias", "same"),
    "visual.proj": ("image/proj/proj/kernel", "same"),
    "token_embedding.weight": ("text/token_embed", "same"),
    "positional_embedding": ("text/pos_embed", "same"),
    "ln_final.weight": ("text/ln_final/LayerNorm_0/scale", "same"),
    "ln_final.bias": ("text/ln_final/LayerNorm_0/bias", "same"),
    "text_projection": ("text/proj/proj/kernel", "same"),
    "logit_scale": ("head/logit_scale", "same"),
    "logit_bias": ("head/logit_bias", "same"),
}
_BLOCK = {
    "ln_1.weight": ("ln1/LayerNorm_0/scale", "same"),
    "ln_1.bias": ("ln1/LayerNorm_0/bias", "same"),
    "ln_2.weight": ("ln2/LayerNorm_0/scale", "same"),
    "ln_2.bias": ("ln2/LayerNorm_0/bias", "same"),
    "attn.in_proj_weight": ("attn/qkv_kernel", "qkv_kernel"),
    "attn.in_proj_bias": ("attn/qkv_bias", "flat"),
    "attn.out_proj.weight": ("attn/out_kernel", "out_kernel"),
    "attn.out_proj.bias": ("attn/out_bias", "same"),
    "mlp.c_fc.weight": ("mlp/fc1/kernel", "dense"),
    "mlp.c_fc.bias": ("mlp/fc1/bias", "same"),
    "mlp.c_proj.weight": ("mlp/fc2/kernel", "dense"),
    "mlp.c_proj.bias": ("mlp/fc2/bias", "same"),
}
_BLOCK_KEY = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_PATH = re.compile(r"^(image|text)/encoder/block(\d+)/(.+)$")


def rsjax_path(key: str) -> tuple[str, str] | None:
  """torch key -> (rsjax parameter path, layout kind), or None where it has no place."""
  if key in _TOP:
    return _TOP[key]
  m = _BLOCK_KEY.match(key)
  if m and m.group(3) in _BLOCK:
    tower = "image" if m.group(1) else "text"
    path, kind = _BLOCK[m.group(3)]
    return f"{tower}/encoder/block{m.group(2)}/{path}", kind
  return None


_TOP_INVERSE = {path: (key, kind) for key, (path, kind) in _TOP.items()}
_BLOCK_INVERSE = {path: (key, kind) for key, (path, kind) in _BLOCK.items()}


def torch_key(path: str) -> tuple[str, str] | None:
  """rsjax parameter path -> (torch key, layout kind), or None where open_clip has no such tensor."""
  if path in _TOP_INVERSE:
    return _TOP_INVERSE[path]
  m = _BLOCK_PATH.match(path)
  if m and m.group(3) in _BLOCK_INVERSE:
    key, kind = _BLOCK_INVERSE[m.group(3)]
    prefix = "visual." if m.group(1) == "image" else ""
    return f"{prefix}transformer.resblocks.{m.group(2)}.{key}", kind
  return None


def torch_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The torch tensor shape that fills an rsjax parameter of `shape` with layout `kind`."""
  if kind == "same":
    return tuple(shape)
  if kind == "conv":  # [p, p, C, D] <- [D, C, p, p]
    return (shape[3], shape[2], shape[0], shape[1])
  if kind == "dense":
    return (shape[1], shape[0])
  if kind == "qkv_kernel":  # [D, 3, H, Dh] <- [3 H Dh, D]
    return (shape[1] * shape[2] * shape[3], shape[0])
  if kind == "flat":
    return (math.prod(shape),)
  if kind == "out_kernel":  # [H, Dh, D] <- [D, H Dh]
    return (shape[2], shape[0] * shape[1])
  raise ValueError(f"unknown layout kind {kind}")


def to_rsjax_layout(kind: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """torch tensor (as numpy) -> rsjax parameter of `shape`."""
  if kind == "same":
    return value.reshape(shape)
  if kind == "conv":
    return value.transpose(2, 3, 1, 0)
  if kind == "dense":
    return value.T
  if kind == "qkv_kernel":
    d, three, heads, head_dim = shape
    return value.reshape(three, heads, head_dim, d).transpose(3, 0, 1, 2)
  if kind == "flat":
    return value.reshape(shape)
  if kind == "out_kernel":
    return value.T.reshape(shape)
  raise ValueError(f"unknown layout kind {kind}")


def to_torch_layout(kind: str, value: np.ndarray) -> np.ndarray:
  """rsjax parameter -> the numpy form of its open_clip tensor (inverse of to_rsjax_layout)."""
  if kind == "same":
    return value
  if kind == "conv":
    return value.transpose(3, 2, 0, 1)
  if kind == "dense":
    return value.T
  if kind == "qkv_kernel":
    d = value.shape[0]
    return value.transpose(1, 2, 3, 0).reshape(-1, d)
  if kind == "flat":
    return value.reshape(-1)
  if kind == "out_kernel":
    return value.reshape(-1, value.shape[-1]).T
  raise ValueError(f"unknown layout kind {kind}")


# ---------------------------------------------------------------------------------------------
# Reading checkpoint files.

def _is_torchscript(path: str) -> bool:
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor; half/bfloat16 weights become float32
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def _import_torch(path: str):
  try:
    import torch
  except ImportError:
    raise ConversionError(f"{path}: reading PyTorch pickles needs torch (pip install torch), or "
                          "convert the file to .safetensors first") from None
  return torch


def read_checkpoint(path: str, unsafe_pickle: bool = False) -> tuple[dict[str, np.ndarray], str]:
  """A checkpoint file -> (its tensors by key as float32/int numpy arrays, source kind).

  Pickled files are loaded with torch.load(weights_only=True), which runs no code from the file;
  `unsafe_pickle` lifts that for files from a trusted source that pickle other objects.
  """
  if not os.path.isfile(path):
    raise ConversionError(f"checkpoint file not found: {path}")
  if path.endswith(".safetensors"):
    try:
      import torch  # noqa: F401  (reads bfloat16, which numpy cannot)
      from safetensors.torch import load_file
      tensors = {k: _to_numpy(v) for k, v in load_file(path).items()}
    except ImportError:
      from safetensors.numpy import load_file
      tensors = {k: np.asarray(v) for k, v in load_file(path).items()}
    return tensors, "safetensors"
  torch = _import_torch(path)
  if _is_torchscript(path):
    module = torch.jit.load(path, map_location="cpu")
    return {k: _to_numpy(v) for k, v in module.state_dict().items()}, "torchscript"
  try:
    obj = torch.load(path, map_location="cpu", weights_only=not unsafe_pickle)
  except Exception as e:
    raise ConversionError(
        f"{path}: torch.load could not read it safely ({type(e).__name__}: {e}). If the file comes "
        "from a source you trust and pickles other objects, rerun with --unsafe-pickle") from e
  tensors, nest = _flatten_checkpoint(obj, path)
  return tensors, "pickle" + nest


def _flatten_checkpoint(obj, path: str) -> tuple[dict[str, np.ndarray], str]:
  """Finds the state dict (top level, or under 'state_dict' / 'model'), strips 'module.'.
  Returns it and where it was found, naming what else the file held (e.g. optimizer state)."""
  if not isinstance(obj, dict):
    raise ConversionError(f"{path}: holds a {type(obj).__name__}, not a state dict")
  where = ""
  for nest in ("state_dict", "model", "module"):
    if nest in obj and isinstance(obj[nest], dict):
      others = sorted(str(k) for k in obj if k != nest)
      where = f" under '{nest}'" + (f" (also held, not weights: {', '.join(others)})" if others else "")
      obj = obj[nest]
      break
  tensors = {}
  bad = []
  for key, value in obj.items():
    if hasattr(value, "detach") or isinstance(value, np.ndarray):
      tensors[key] = _to_numpy(value)
    else:
      bad.append(f"{key} ({type(value).__name__})")
  if bad:
    raise ConversionError(f"{path}: entries that are not tensors:" + _listed(bad))
  if tensors and all(k.startswith("module.") for k in tensors):
    tensors = {k[len("module."):]: v for k, v in tensors.items()}
    where += ", keys prefixed 'module.'"
  return tensors, where


def _listed(items: list[str]) -> str:
  """Every item on its own line: a refusal names all offending keys, however many."""
  return "\n  " + "\n  ".join(items)


# ---------------------------------------------------------------------------------------------
# Architecture from shapes.

def clip_model_config(name: str):
  """(model ConfigDict, image size) of a registry CLIP with the settings converted weights need:
  CLIP's mean/std on the input and end-of-text pooling by the largest id (rsjax.models.text)."""
  from rsjax.models.registry import model_config

  cfg, size = model_config(name)
  cfg.image.input_norm = "clip"
  cfg.text.pool = "argmax"
  return cfg, size


def _blocks(tensors: dict, prefix: str) -> int:
  found = {int(m.group(1)) for k in tensors
           if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
  if found and found != set(range(len(found))):
    missing = sorted(set(range(max(found) + 1)) - found)
    raise ConversionError(f"blocks {prefix}N are not numbered 0..{max(found)}: missing {missing}")
  return len(found)


def _shape_facts(tensors: dict) -> dict:
  """The numbers the tensor shapes fix: widths, depths, patch, image size, vocabulary..."""
  needed = ["visual.conv1.weight", "visual.positional_embedding", "visual.proj",
            "token_embedding.weight", "positional_embedding", "text_projection",
            "visual.transformer.resblocks.0.mlp.c_fc.weight", "transformer.resblocks.0.mlp.c_fc.weight"]
  missing = [k for k in needed if k not in tensors]
  if missing:
    hint = (" (this looks like a ResNet image tower, e.g. RN50, which rsjax does not implement)"
            if any(k.startswith("visual.layer1.") for k in tensors) else "")
    raise ConversionError("not a ViT CLIP state dict: keys missing" + hint + ":" + _listed(missing))
  conv = tensors["visual.conv1.weight"].shape  # [D, 3, p, p]
  if len(conv) != 4 or conv[2] != conv[3] or conv[1] != 3:
    raise ConversionError(f"visual.conv1.weight: shape {conv} is not [width, 3, p, p]")
  grid = tensors["visual.positional_embedding"].shape[0] - 1
  side = int(round(math.sqrt(grid)))
  if side * side != grid:
    raise ConversionError(f"visual.positional_embedding: {grid} patch positions are not a square grid")
  width, text_width = conv[0], tensors["token_embedding.weight"].shape[1]
  return dict(
      width=width, patch=conv[2], image_size=side * conv[2],
      depth=_blocks(tensors, "visual.transformer.resblocks."),
      mlp_ratio=tensors["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
      embed_dim=tensors["visual.proj"].shape[1],
      vocab_size=tensors["token_embedding.weight"].shape[0],
      context_length=tensors["positional_embedding"].shape[0],
      text_width=text_width, text_depth=_blocks(tensors, "transformer.resblocks."),
      text_mlp_ratio=tensors["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width,
      logit_bias="logit_bias" in tensors)


def _facts_of(cfg, size: int) -> dict:
  return dict(width=cfg.image.width, patch=cfg.image.patch_size, image_size=size,
              depth=cfg.image.depth, mlp_ratio=cfg.image.mlp_ratio, embed_dim=cfg.embed_dim,
              vocab_size=cfg.text.vocab_size, context_length=cfg.text.context_length,
              text_width=cfg.text.width, text_depth=cfg.text.depth,
              text_mlp_ratio=cfg.text.mlp_ratio, logit_bias=bool(cfg.logit_bias))


def infer_model(tensors: dict, arch: str | None = None, activation: str | None = None,
                openai_style: bool = False):
  """(arch name, model ConfigDict, image size, notes) for a CLIP state dict.

  Shapes fix everything but the number of heads and the activation. Heads come from the registry
  entry whose shapes match (else width / 64, CLIP's head width); the activation from `activation`,
  else `arch`, else QuickGELU for OpenAI's own files (`openai_style`: TorchScript archives or state
  dicts with OpenAI's metadata scalars), else GELU, as open_clip's non-quickgelu models use.
  """
  from rsjax.models.registry import default_model_config, list_models

  notes = []
  if arch:
    cfg, size = clip_model_config(arch)
    notes.append(f"architecture {arch} given")
  else:
    facts = _shape_facts(tensors)
    matches = [n for n in list_models() if _facts_of(*clip_model_config(n)) == facts]
    if matches:
      arch = min(matches, key=len)  # the base name; its -quickgelu twin differs in activation only
      cfg, size = clip_model_config(arch)
      notes.append(f"shapes match {arch}")
    else:
      arch = "custom"
      cfg, size = default_model_config(), facts["image_size"]
      cfg.embed_dim = facts["embed_dim"]
      cfg.logit_bias = facts["logit_bias"]
      cfg.image.update(width=facts["width"], depth=facts["depth"], heads=max(facts["width"] // 64, 1),
                       patch_size=facts["patch"], mlp_ratio=facts["mlp_ratio"], stem="patch",
                       pool="cls", input_norm="clip")
      cfg.text.update(vocab_size=facts["vocab_size"], context_length=facts["context_length"],
                      width=facts["text_width"], depth=facts["text_depth"],
                      heads=max(facts["text_width"] // 64, 1), mlp_ratio=facts["text_mlp_ratio"],
                      causal=True, pool="argmax")
      notes.append(f"shapes match no registry model: custom config, heads = width / 64 "
                   f"(image {cfg.image.heads}, text {cfg.text.heads}); pass --arch if that is wrong")
    if "logit_bias" in tensors:
      cfg.logit_bias = True
  if activation is None:
    if arch.endswith("-quickgelu"):
      activation = "quick_gelu"
    elif openai_style:
      activation = "quick_gelu"
      notes.append("OpenAI-format file: QuickGELU (as OpenAI trained it); --activation gelu to override")
    else:
      activation = cfg.activation
      notes.append(f"activation {activation} (open_clip's default for non-quickgelu names; the "
                   "shapes cannot tell; --activation quick_gelu for OpenAI-trained weights)")
  if activation not in ("gelu", "quick_gelu"):
    raise ConversionError(f"unknown activation {activation!r} (use gelu or quick_gelu)")
  cfg.activation = activation
  if activation == "quick_gelu" and not arch.endswith("-quickgelu") and arch != "custom":
    twin = arch + "-quickgelu"
    arch = twin if twin in list_models() else arch
  return arch, cfg, size, notes


def parameter_shapes(model_cfg, image_size: int) -> dict[str, tuple[int, ...]]:
  """'image/encoder/block0/attn/qkv_kernel' -> shape, for every parameter of the model, without
  allocating anything."""
  import flax
  import jax
  import jax.numpy as jnp

  from rsjax.models.two_tower import TwoTower

  model = TwoTower(model_cfg)
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  ids = jax.ShapeDtypeStruct((1, model_cfg.text.context_length), jnp.int32)
  abstract = jax.eval_shape(lambda i, t: model.init(jax.random.key(0), i, t), images, ids)
  flat = flax.traverse_util.flatten_dict(flax.linen.meta.unbox(abstract["params"]), sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def place(tensors: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]],
          metadata_check: Callable[[str, np.ndarray], str | None]) -> tuple[dict, dict]:
  """Puts every tensor at its rsjax path. Returns (flat params, accounting) or raises
  ConversionError naming every unplaceable key, misfitting shape and unfilled parameter."""
  params, unplaced, misfit, metadata = {}, [], [], {}
  for key in sorted(tensors):
    value = tensors[key]
    if key in CHECKED_KEYS:
      problem = metadata_check(key, value)
      if problem:
        misfit.append(problem)
      else:
        metadata[key] = int(value) if value.size == 1 else f"{tuple(value.shape)} causal mask"
      continue
    target = rsjax_path(key)
    if target is None or target[0] not in shapes:
      unplaced.append(f"{key} {tuple(value.shape)}" + ("" if target is None else
                                                       f" (model has no {target[0]})"))
      continue
    path, kind = target
    want = torch_shape(kind, shapes[path])
    if tuple(value.shape) != want and not (kind == "same" and value.size == math.prod(want)
                                           and len(want) == 0):
      misfit.append(f"{key}: checkpoint {tuple(value.shape)}, model needs {want} for {path}")
      continue
    # np.array, not np.ascontiguousarray, which turns the scalar logit_scale into shape (1,).
    params[path] = np.array(to_rsjax_layout(kind, value, shapes[path]), np.float32, order="C")
  unfilled = [f"{p} {s}" for p, s in sorted(shapes.items()) if p not in params]
  problems = []
  if unplaced:
    problems.append("keys with no place in the rsjax model:" + _listed(unplaced))
  if misfit:
    problems.append("shapes that do not fit:" + _listed(misfit))
  if unfilled:
    problems.append("model parameters no key fills:" + _listed(unfilled))
  if problems:
    raise ConversionError("\n".join(problems))
  return params, {"placed": len(params), "metadata": metadata}


def _is_causal_mask(value: np.ndarray, n: int) -> bool:
  """A [n, n] mask hiding later positions: additive (-inf / very negative above the diagonal, 0
  elsewhere) or boolean (True above the diagonal = masked, or True on and below = attend)."""
  if value.shape != (n, n):
    return False
  above = np.triu(np.ones((n, n), bool), 1)
  if value.dtype == bool:
    return bool(np.array_equal(value, above) or np.array_equal(value, ~above))
  return bool(np.all(value[above] <= -1e4) and np.all(value[~above] == 0))


# ---------------------------------------------------------------------------------------------
# Writing and reading converted checkpoints.

def _nest(flat: dict[str, np.ndarray]) -> dict:
  import flax
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 24), b""):
      h.update(chunk)
  return h.hexdigest()


def convert_file(path: str, out_dir: str, arch: str | None = None, activation: str | None = None,
                 unsafe_pickle: bool = False, log=print) -> dict:
  """Converts one checkpoint file into OUT_DIR (which must not exist or be empty). Returns the
  written converted.json content."""
  import orbax.checkpoint as ocp

  from rsjax.data.clip_preprocess import CLIP_MEAN, CLIP_STD
  from rsjax.data.clip_tokenizer import ClipTokenizer

  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise ConversionError(f"output folder {out_dir} exists and is not empty")
  tensors, kind = read_checkpoint(path, unsafe_pickle)
  openai_style = kind == "torchscript" or any(k in tensors for k in OPENAI_METADATA)
  log(f"convert: read {len(tensors)} tensors from {path} ({kind})")
  name, cfg, size, notes = infer_model(tensors, arch, activation, openai_style)
  for note in notes:
    log(f"convert: {note}")
  shapes = parameter_shapes(cfg, size)
  expected_meta = {"input_resolution": size, "context_length": cfg.text.context_length,
                   "vocab_size": cfg.text.vocab_size}

  def check_metadata(key, value):
    if key == "attn_mask":
      return None if _is_causal_mask(value, cfg.text.context_length) else (
          f"attn_mask {tuple(value.shape)}: not the causal mask of {cfg.text.context_length} tokens")
    if np.size(value) != 1 or int(value) != expected_meta[key]:
      return f"{key}: checkpoint says {value.tolist()}, the weights' shapes say {expected_meta[key]}"
    return None

  params, accounting = place(tensors, shapes, check_metadata)
  tokenizer = ClipTokenizer()
  if tokenizer.vocab_size != cfg.text.vocab_size:
    raise ConversionError(f"token_embedding.weight has {cfg.text.vocab_size} rows but CLIP's BPE "
                          f"tokenizer has {tokenizer.vocab_size} ids")
  info = {
      "format": FORMAT, "version": 1, "arch": name,
      "model": cfg.to_dict(), "image_size": size,
      "tokenizer": {**tokenizer.spec(), "data.tokenizer_path": TOKENIZER_PATH},
      "preprocess": {"resize": "shortest side, bicubic", "crop": "center", "size": size,
                     "mean": CLIP_MEAN.tolist(), "std": CLIP_STD.tolist()},
      "source": {"path": os.path.abspath(path), "kind": kind, "sha256": _sha256(path),
                 "keys": len(tensors)},
      "accounting": {**accounting, "keys": len(tensors)},
      "notes": notes,
      "params": {k: list(v.shape) for k, v in sorted(params.items())},
  }
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".convert-", dir=parent)
  try:
    # Uncompressed: trained float weights shrink by under 10% and restore about 3x slower.
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_compression=False)) as ckptr:
      ckptr.save(os.path.join(tmp, PARAMS_DIR), args=ocp.args.PyTreeSave(_nest(params)))
    with open(os.path.join(tmp, INFO_FILE), "w") as f:
      json.dump(info, f, indent=1)
    # The tokenizer's merges travel with the weights, so training needs no open_clip install.
    shutil.copyfile(tokenizer.path, os.path.join(tmp, VOCAB_NAME))
    if os.path.exists(out_dir):
      os.rmdir(out_dir)
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  n = sum(v.size for v in params.values())
  log(f"convert: {path} ({len(tensors)} keys) -> {out_dir}: {name}, image {size}, "
      f"{n / 1e6:.1f}M parameters, every key placed")
  return info


def read_info(directory: str) -> dict:
  path = os.path.join(directory, INFO_FILE)
  if not os.path.isfile(path):
    raise ConversionError(f"{directory} is not a converted checkpoint (no {INFO_FILE}; make one "
                          "with `rsjax convert`)")
  with open(path) as f:
    info = json.load(f)
  if info.get("format") != FORMAT:
    raise ConversionError(f"{path}: unknown format {info.get('format')!r}")
  return info


def load_converted(directory: str):
  """(converted.json content, model ConfigDict, flat params {path: numpy float32})."""
  import flax
  import jax
  import ml_collections
  import orbax.checkpoint as ocp

  directory = os.path.abspath(directory)
  info = read_info(directory)
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(os.path.join(directory, PARAMS_DIR))
  flat = flax.traverse_util.flatten_dict(restored, sep="/")
  flat = {k: np.asarray(jax.device_get(v)) for k, v in flat.items()}
  return info, ml_collections.ConfigDict(info["model"]), flat


# Model keys that change neither the parameters nor what they compute (or that the parameter
# check already covers): they may differ between a converted checkpoint and a run's config.
_FREE_MODEL_KEYS = ("dtype", "remat", "scan", "init_logit_scale", "init_logit_bias")
_FREE_PREFIXES = ("image.pyramid.", "hashing.")


def _flat_config(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat_config(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
  return out


def scan_layout(flat: dict[str, np.ndarray], wanted: dict[str, tuple]) -> dict[str, np.ndarray]:
  """Stacks per-block parameters (encoder/blockI/...) into the layout of a scanned model
  (encoder/blocksA_B/block/... with a leading layer axis) where `wanted` asks for it."""
  out = {k: v for k, v in flat.items() if k in wanted}
  for path in wanted:
    m = re.match(r"^(.*)/encoder/blocks(\d+)_(\d+)/block/(.+)$", path)
    if m:
      tower, first, last, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
      parts = [flat.get(f"{tower}/encoder/block{i}/{rest}") for i in range(first, last + 1)]
      if all(p is not None for p in parts):
        out[path] = np.stack(parts)
  return out


def unscan_layout(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Inverse of scan_layout: encoder/blocksA_B/block/X [n, ...] -> encoder/blockI/X."""
  out = {}
  for path, value in flat.items():
    m = re.match(r"^(.*)/encoder/blocks(\d+)_(\d+)/block/(.+)$", path)
    if not m:
      out[path] = value
      continue
    first = int(m.group(2))
    for j in range(value.shape[0]):
      out[f"{m.group(1)}/encoder/block{first + j}/{m.group(4)}"] = value[j]
  return out


def load_init_params(directory: str, config, abstract_params, log=print):
  """The parameters of converted checkpoint `directory`, laid out (shapes, shardings) as
  `abstract_params`, for `init.checkpoint`. Raises ConversionError naming every model config key
  and every parameter in which the checkpoint and the run differ."""
  import flax
  import jax

  from rsjax.models.vit import interpolate_pos_embed

  from rsjax.models.registry import default_model_config

  info, _, flat = load_converted(directory)
  # A key one side lacks (written before the key existed) counts as its default value.
  defaults = _flat_config(default_model_config().to_dict())
  ours = {**defaults, **_flat_config(config.model.to_dict())}
  theirs = {**defaults, **_flat_config(info["model"])}
  free = lambda k: k in _FREE_MODEL_KEYS or k.startswith(_FREE_PREFIXES)
  problems = [f"model.{k}: checkpoint {theirs.get(k)!r}, config {ours.get(k)!r}"
              for k in sorted(ours.keys() | theirs.keys())
              if not free(k) and ours.get(k) != theirs.get(k)]
  target = flax.traverse_util.flatten_dict(abstract_params, sep="/")
  wanted = {k: tuple(v.shape) for k, v in target.items()}
  pos = "image/pos_embed"
  if pos in flat and pos in wanted and flat[pos].shape != wanted[pos]:
    grid = int(round(math.sqrt(wanted[pos][0] - 1)))
    if grid * grid == wanted[pos][0] - 1 and flat[pos].shape[1] == wanted[pos][1]:
      log(f"init: resizing {pos} {flat[pos].shape} -> {wanted[pos]} (bicubic) for "
          f"data.image_size={config.data.image_size}")
      flat[pos] = interpolate_pos_embed(flat[pos], (grid, grid))
  flat = scan_layout(flat, wanted) if config.model.scan else flat
  problems += [f"{k}: checkpoint {tuple(flat[k].shape)}, model {wanted[k]}"
               for k in sorted(wanted.keys() & flat.keys()) if tuple(flat[k].shape) != wanted[k]]
  problems += [f"{k}: not in the checkpoint" for k in sorted(wanted.keys() - flat.keys())]
  problems += [f"{k}: in the checkpoint, not in the model" for k in sorted(flat.keys() - wanted.keys())]
  if problems:
    hint = ("\nuse the converted model's settings (see its converted.json), e.g. "
            f"--config configs/finetune_clip_rsicd.py:init={directory}")
    raise ConversionError(f"init.checkpoint {directory} does not fit this run:" + _listed(problems)
                          + hint)
  placed = {k: jax.device_put(flat[k].astype(target[k].dtype), target[k].sharding)
            if getattr(target[k], "sharding", None) is not None else flat[k] for k in target}
  log(f"init: {len(placed)} parameters from {directory} ({info['arch']})")
  return flax.traverse_util.unflatten_dict(placed, sep="/")


# ---------------------------------------------------------------------------------------------
# rsjax -> open_clip.

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
  settings = _flat_config(model_cfg.to_dict())
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
    problems.append("parameters open_clip has no tensor for:" + _listed(unmapped))
  if problems:
    raise ConversionError("cannot export to open_clip:" + _listed(problems))
  return state


def save_open_clip(state: dict[str, np.ndarray], model_cfg, image_size: int, out: str,
                   log=print) -> tuple[str, str]:
  """Writes the state dict (.safetensors with numpy; .pt/.bin with torch) and, beside it,
  NAME.json in open_clip's model-config format. Returns (weights path, config path)."""
  out = os.path.abspath(out)
  stem, ext = os.path.splitext(out)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  if ext == ".safetensors":
    from safetensors.numpy import save_file
    save_file(state, out)
  elif ext in (".pt", ".pth", ".bin"):
    torch = _import_torch(out)
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, out)
  else:
    raise ConversionError(f"{out}: unknown weights format {ext!r} (use .safetensors, .pt or .bin)")
  config_path = stem + ".json"
  with open(config_path, "w") as f:
    json.dump(open_clip_config(model_cfg, image_size), f, indent=2)
  n = sum(v.size for v in state.values())
  log(f"export: {len(state)} tensors ({n / 1e6:.1f}M parameters) -> {out}; open_clip model "
      f"config -> {config_path} (open_clip.add_model_config('{config_path}'); "
      f"open_clip.create_model('{os.path.basename(stem)}', pretrained='{out}'))")
  return out, config_path
