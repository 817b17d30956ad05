"""The torch <-> rsjax correspondence: parameter names and tensor layouts, both ways.

One table (`TOP`, `BLOCK`) defines the correspondence for both directions. Layouts:
  conv1.weight [D, 3, p, p]           -> patch_embed/kernel [p, p, 3, D]
  attn.in_proj_weight [3D, D]         -> attn/qkv_kernel [D, 3, H, Dh]   (rows q | k | v, head-major)
  attn.out_proj.weight [D, D] (out,in) -> attn/out_kernel [H, Dh, D]
  mlp.c_fc / c_proj weight [out, in]  -> fc1 / fc2 kernel [in, out]
  visual.proj, text_projection [D, E] -> proj/proj/kernel [D, E] (already x @ W)
`place` puts a whole state dict into the rsjax tree; `scan_layout` / `unscan_layout` move between
per-block parameters and a scanned model's stacked ones.
"""

from __future__ import annotations

import math
import re
from typing import Callable

import numpy as np

from rsjax.convert.errors import ConversionError, listed

# Scalars OpenAI's original checkpoints carry besides the weights; checked against the shapes.
OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")
# Non-weights a state dict may hold, each checked rather than placed: OpenAI's scalars, and the
# text tower's causal attention mask (a buffer in TorchScript archives), implied by text.causal.
CHECKED_KEYS = OPENAI_METADATA + ("attn_mask",)

# torch key -> (rsjax path, layout kind).
TOP = {
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
# Within one transformer block: key suffix -> (path suffix, layout kind).
BLOCK = {
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
_SCANNED_PATH = re.compile(r"^(.*)/encoder/blocks(\d+)_(\d+)/block/(.+)$")
_TOP_INVERSE = {path: (key, kind) for key, (path, kind) in TOP.items()}
_BLOCK_INVERSE = {path: (key, kind) for key, (path, kind) in BLOCK.items()}


def rsjax_path(key: str) -> tuple[str, str] | None:
  """torch key -> (rsjax parameter path, layout kind), or None where it has no place."""
  if key in TOP:
    return TOP[key]
  m = _BLOCK_KEY.match(key)
  if m and m.group(3) in BLOCK:
    tower = "image" if m.group(1) else "text"
    path, kind = BLOCK[m.group(3)]
    return f"{tower}/encoder/block{m.group(2)}/{path}", kind
  return None


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
    problems.append("keys with no place in the rsjax model:" + listed(unplaced))
  if misfit:
    problems.append("shapes that do not fit:" + listed(misfit))
  if unfilled:
    problems.append("model parameters no key fills:" + listed(unfilled))
  if problems:
    raise ConversionError("\n".join(problems))
  return params, {"placed": len(params), "metadata": metadata}


def is_causal_mask(value: np.ndarray, n: int) -> bool:
  """A [n, n] mask hiding later positions: additive (-inf / very negative above the diagonal, 0
  elsewhere) or boolean (True above the diagonal = masked, or True on and below = attend)."""
  if value.shape != (n, n):
    return False
  above = np.triu(np.ones((n, n), bool), 1)
  if value.dtype == bool:
    return bool(np.array_equal(value, above) or np.array_equal(value, ~above))
  return bool(np.all(value[above] <= -1e4) and np.all(value[~above] == 0))


def scan_layout(flat: dict[str, np.ndarray], wanted: dict[str, tuple]) -> dict[str, np.ndarray]:
  """Stacks per-block parameters (encoder/blockI/...) into the layout of a scanned model
  (encoder/blocksA_B/block/... with a leading layer axis) where `wanted` asks for it."""
  out = {k: v for k, v in flat.items() if k in wanted}
  for path in wanted:
    m = _SCANNED_PATH.match(path)
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
    m = _SCANNED_PATH.match(path)
    if not m:
      out[path] = value
      continue
    first = int(m.group(2))
    for j in range(value.shape[0]):
      out[f"{m.group(1)}/encoder/block{first + j}/{m.group(4)}"] = value[j]
  return out
