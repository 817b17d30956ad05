"""The model a CLIP state dict holds: its rsjax model config, inferred from the tensor shapes (or
given as a registry name), and the parameter shapes that config has.

Shapes fix widths, depths, patch size, image size, vocabulary and context length; the number of
heads comes from the matching registry entry (else width / 64) and the activation from the caller
or the file's origin (`infer_model`).
"""

from __future__ import annotations

import math
import re

import flax
import jax
import jax.numpy as jnp

from rsjax.convert.errors import ConversionError, listed
from rsjax.models.registry import default_model_config, list_models, model_config
from rsjax.models.two_tower import TwoTower


def clip_model_config(name: str):
  """(model ConfigDict, image size) of a registry CLIP with the settings converted weights need:
  CLIP's mean/std on the input and end-of-text pooling by the largest id (rsjax.models.text)."""
  cfg, size = model_config(name)
  cfg.image.input_norm = "clip"
  cfg.text.pool = "argmax"
  return cfg, size


def flat_config(d: dict, prefix: str = "") -> dict:
  """A nested model-config dict -> {'image.width': 768, ...} (lists as tuples), for comparing
  two configs key by key."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flat_config(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
  return out


def _blocks(tensors: dict, prefix: str) -> int:
  """How many blocks PREFIX0., PREFIX1., ... the state dict has; refuses gaps in the numbering."""
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
    raise ConversionError("not a ViT CLIP state dict: keys missing" + hint + ":" + listed(missing))
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
  """The same numbers as _shape_facts, read from a model config."""
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
  model = TwoTower(model_cfg)
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  ids = jax.ShapeDtypeStruct((1, model_cfg.text.context_length), jnp.int32)
  abstract = jax.eval_shape(lambda i, t: model.init(jax.random.key(0), i, t), images, ids)
  flat = flax.traverse_util.flatten_dict(flax.linen.meta.unbox(abstract["params"]), sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}
