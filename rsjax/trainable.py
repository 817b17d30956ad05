"""Which parameters a run trains (`train.frozen`), and the split of a parameter tree into the
trained part and the frozen part.

A frozen parameter is not differentiated, has no optimizer state and is not written to the run's
checkpoints: the train state holds the trained part only, and the frozen part is read again from
`init.checkpoint` (see rsjax/base_params.py). Patterns are shell globs (fnmatch) on the parameter
path joined with '/', e.g. "image/*", "*/ln_*", "text/token_embedding/*"; three shorthands:

  image_tower   every parameter of the image tower (LiT's locked image tower)
  text_tower    every parameter of the text tower
  base          every parameter that is not a LoRA or adapter parameter (model.lora, model.adapter)
                nor the contrastive head's temperature and bias: what parameter-efficient
                fine-tuning leaves alone
"""

from __future__ import annotations

import fnmatch

import flax
import ml_collections

from rsjax.errors import ConfigError

SHORTHANDS = ("image_tower", "text_tower", "base")
_HEAD_NAMES = ("logit_scale", "logit_bias")


def path_name(key: tuple) -> str:
  return "/".join(str(k) for k in key)


def _is_peft(path: str) -> bool:
  """A LoRA or bottleneck-adapter parameter (their names: see rsjax/models/peft.py)."""
  parts = path.split("/")
  return "adapter" in parts[:-1] or "lora_" in parts[-1]


def _matches(pattern: str, path: str) -> bool:
  if pattern == "image_tower":
    return path.startswith("image/")
  if pattern == "text_tower":
    return path.startswith("text/")
  if pattern == "base":
    return not _is_peft(path) and path.split("/")[-1] not in _HEAD_NAMES
  return fnmatch.fnmatchcase(path, pattern)


def frozen_patterns(t: ml_collections.ConfigDict) -> tuple[str, ...]:
  """train.frozen as a tuple (() for configs written before the key existed)."""
  patterns = t.get("frozen", ())
  if isinstance(patterns, str):
    patterns = (patterns,) if patterns else ()
  return tuple(patterns)


FROZEN_DTYPES = ("float32", "bfloat16")


def frozen_dtype(t: ml_collections.ConfigDict) -> str:
  """train.frozen_dtype: the dtype frozen parameters are held in on the devices ("float32")."""
  name = t.get("frozen_dtype", "float32")
  if name not in FROZEN_DTYPES:
    raise ConfigError(f"config key 'train.frozen_dtype': unknown {name!r} (choose from "
                      f"{', '.join(FROZEN_DTYPES)})")
  return name


def frozen_tower_dtypes(t: ml_collections.ConfigDict) -> tuple[tuple[str, str], ...]:
  """The towers that compute in train.frozen_dtype: those whose base the patterns freeze as a
  whole (image_tower / text_tower, or base for both); () under float32."""
  name, patterns = frozen_dtype(t), frozen_patterns(t)
  if name == "float32":
    return ()
  towers = [tower for tower in ("image", "text")
            if f"{tower}_tower" in patterns or "base" in patterns]
  return tuple((tower, name) for tower in towers)


class Selection:
  """The frozen / trained split that `train.frozen` gives for one model's parameter paths."""

  def __init__(self, patterns: tuple[str, ...], paths: list[str]):
    self.patterns = tuple(patterns)
    unused = [p for p in self.patterns if not any(_matches(p, path) for path in paths)]
    if unused:
      examples = ", ".join(paths[:3])
      raise ConfigError(f"config key 'train.frozen': {', '.join(map(repr, unused))} matches no "
                        f"parameter (paths look like {examples}; shorthands: "
                        f"{', '.join(SHORTHANDS)})")
    self.frozen = frozenset(p for p in paths if any(_matches(q, p) for q in self.patterns))
    if len(self.frozen) == len(paths):
      raise ConfigError("config key 'train.frozen': every parameter is frozen, nothing would "
                        "train (with model.lora or model.adapter off, 'base' freezes all but the "
                        "temperature)" if "base" in self.patterns else
                        "config key 'train.frozen': every parameter is frozen, nothing would train")

  @classmethod
  def of(cls, config: ml_collections.ConfigDict, params) -> Selection:
    """The selection for `params` (a nested tree of arrays or ShapeDtypeStructs)."""
    flat = flax.traverse_util.flatten_dict(params)
    return cls(frozen_patterns(config.train), sorted(path_name(k) for k in flat))

  @property
  def any_frozen(self) -> bool:
    return bool(self.frozen)

  def split(self, params) -> tuple[dict, dict]:
    """Nested params -> (trained, frozen), each a nested dict holding only its own leaves."""
    flat = flax.traverse_util.flatten_dict(params)
    trained = {k: v for k, v in flat.items() if path_name(k) not in self.frozen}
    frozen = {k: v for k, v in flat.items() if path_name(k) in self.frozen}
    return (flax.traverse_util.unflatten_dict(trained),
            flax.traverse_util.unflatten_dict(frozen))

  def frozen_part(self, params) -> dict:
    return self.split(params)[1]


def join(trained, frozen) -> dict:
  """The inverse of Selection.split: one nested tree with the leaves of both."""
  if not frozen:
    return trained
  flat = dict(flax.traverse_util.flatten_dict(trained))
  flat.update(flax.traverse_util.flatten_dict(frozen))
  return flax.traverse_util.unflatten_dict(flat)


# Parameter-efficient recipes by name, for configs' `peft=NAME` argument (configs/transfer.py,
# configs/finetune_clip_*.py). Each freezes what the method leaves alone.
PRESETS = ("full", "lock_image", "lock_text", "lora", "adapter")


def apply_preset(config: ml_collections.ConfigDict, name: str, rank: int = 8,
                 adapter_dim: int = 16) -> None:
  """Sets train.frozen (and model.lora / model.adapter) for recipe `name`:
    full        every parameter trains
    lock_image  the image tower is frozen (LiT); the text tower and the temperature train
    lock_text   the text tower is frozen
    lora        LoRA of rank `rank` on every attention and MLP projection of both towers; the
                base is frozen
    adapter     a bottleneck adapter of width `adapter_dim` after every block; the base is frozen
  """
  if name not in PRESETS:
    raise ConfigError(f"peft={name!r}: choose from {', '.join(PRESETS)}")
  from rsjax.config import add_shared_keys  # a model section from an older converted folder
  add_shared_keys(config)
  frozen = {"full": (), "lock_image": ("image_tower",), "lock_text": ("text_tower",),
            "lora": ("base",), "adapter": ("base",)}[name]
  with config.unlocked():
    config.train.frozen = frozen
    if name == "lora":
      config.model.lora.update(rank=rank, targets=("qkv", "out", "fc1", "fc2"))
    if name == "adapter":
      config.model.adapter.update(dim=adapter_dim)
