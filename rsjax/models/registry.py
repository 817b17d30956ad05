"""Named model configurations (the `model` section of a run config), open_clip style.

`model_config("ViT-B-16")` returns a ConfigDict with CLIP's widths, depths and heads, laid out so that
converted CLIP weights map one to one; `list_models()` names them all. Run configs take one of these
and override what they change.
"""

from __future__ import annotations

import ml_collections

from rsjax.errors import InputError
from rsjax.models.vit import VIT_SIZES

# name -> (vision size, patch, image size, embed dim, text width, text depth, text heads, activation)
_CLIP = {
    "ViT-B-32": ("B", 32, 224, 512, 512, 12, 8, "gelu"),
    "ViT-B-16": ("B", 16, 224, 512, 512, 12, 8, "gelu"),
    "ViT-L-14": ("L", 14, 224, 768, 768, 12, 12, "gelu"),
    "ViT-L-14-336": ("L", 14, 336, 768, 768, 12, 12, "gelu"),
    "ViT-H-14": ("H", 14, 224, 1024, 1024, 24, 16, "gelu"),
    # OpenAI's original checkpoints use QuickGELU.
    "ViT-B-32-quickgelu": ("B", 32, 224, 512, 512, 12, 8, "quick_gelu"),
    "ViT-B-16-quickgelu": ("B", 16, 224, 512, 512, 12, 8, "quick_gelu"),
    "ViT-L-14-quickgelu": ("L", 14, 224, 768, 768, 12, 12, "quick_gelu"),
}


def list_models() -> list[str]:
  return sorted(_CLIP)


def default_model_config() -> ml_collections.ConfigDict:
  """Every key a `model` section has, with small defaults (overridden by named configs)."""
  return ml_collections.ConfigDict(dict(
      embed_dim=128,
      dtype="float32",
      activation="gelu",
      remat="none",          # none | full | dots | dots_no_batch
      scan=False,            # nn.scan over blocks (compiles deep stacks once)
      projection="linear",   # linear | mlp
      init_logit_scale=2.6592,  # log(1 / 0.07), CLIP's initial temperature
      logit_bias=False,      # a learnable logit bias (SigLIP) ...
      init_logit_bias=0.0,   # ... and its initial value (SigLIP uses -10)
      image=dict(width=192, depth=4, heads=3, patch_size=8, mlp_ratio=4.0, stem="patch",
                 pool="cls",
                 input_norm="none",  # "clip": CLIP's mean/std on the [-1, 1] input (converted weights)
                 # "dataset": these per-channel pixel statistics (0..255 scale) of the data set
                 input_mean=(), input_std=(),
                 # lateral: "pixels" feeds the levels finer than the patch from the pixels;
                 # gate_init: the gate's start (0: the plain ViT's embedding at initialisation)
                 pyramid=dict(enabled=False, taps=(1, 3), strides=(4, 8), channels=64,
                              pool="attention", lateral="none", gate_init=0.0)),
      text=dict(vocab_size=512, context_length=24, width=128, depth=3, heads=2, mlp_ratio=4.0,
                causal=True, pool="eot"),
      hashing=dict(bits=0, beta_start=1.0, beta_end=10.0),  # bits > 0 adds a hashing head
      # Parameter-efficient fine-tuning (rsjax/models/peft.py). rank > 0: LoRA, delta
      # (alpha / rank) A @ B, on these projections (qkv, out, fc1, fc2) of every block of these
      # towers; dim > 0: a bottleneck adapter of that width after every block. Both start as the
      # identity; `rsjax export` merges LoRA into the weights (adapters cannot be exported).
      lora=dict(rank=0, alpha=16.0, targets=("qkv", "out"), towers=("image", "text")),
      adapter=dict(dim=0, towers=("image", "text")),
  ))


def model_config(name: str) -> tuple[ml_collections.ConfigDict, int]:
  """(model ConfigDict, native image size) of a named CLIP architecture."""
  if name not in _CLIP:
    raise InputError(f"unknown model '{name}' (--arch, or a config's arch argument), choose from "
                     f"{list_models()}")
  size, patch, image_size, embed, t_width, t_depth, t_heads, act = _CLIP[name]
  width, depth, heads = VIT_SIZES[size]
  c = default_model_config()
  c.embed_dim = embed
  c.activation = act
  c.image.update(width=width, depth=depth, heads=heads, patch_size=patch, stem="patch", pool="cls")
  # Pyramid taps at a quarter, half, three quarters and the end of the trunk -> strides 4..32.
  c.image.pyramid.taps = tuple(depth * k // 4 - 1 for k in (1, 2, 3, 4))
  c.image.pyramid.strides = (4, 8, 16, 32)
  c.image.pyramid.channels = 256
  c.text.update(vocab_size=49408, context_length=77, width=t_width, depth=t_depth, heads=t_heads,
                causal=True, pool="eot")
  return c, image_size
