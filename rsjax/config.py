"""Config files as code (big_vision style) with overrides that fail early and clearly.

A config is a Python file defining `get_config(arg: str | None) -> ConfigDict`. On the command line
`configs/smoke.py:size=S,res=96` passes the text after ':' as `arg`; `--set train.steps=100` overrides a leaf.
Unknown keys and wrong types raise `ConfigError` naming the key, before anything is compiled.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from typing import Any, Iterable

import ml_collections
from rsjax.errors import ConfigError  # noqa: F401  re-exported: config errors are raised here


def parse_arg(arg: str | None) -> dict[str, str]:
  """'size=S,res=96' -> {'size': 'S', 'res': '96'}; a bare word 'x' -> {'x': ''}."""
  out: dict[str, str] = {}
  for part in (arg or "").split(","):
    if not part:
      continue
    key, _, value = part.partition("=")
    out[key.strip()] = value.strip()
  return out


def config_module(path: str, beside: str | None = None):
  """Imports a config file as a module. `beside`: a config's own __file__, to name a sibling file
  (configs build on each other: `config_module("smoke.py", __file__).get_config()`)."""
  if beside is not None:
    path = os.path.join(os.path.dirname(os.path.abspath(beside)), path)
  name = "rsjax_config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path.py[:arg]`, applies `key=value` overrides, validates, returns a locked ConfigDict."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file not found: {path}")
  if not path.endswith(".py"):
    raise ConfigError(f"config file {path} is not a Python file (configs/NAME.py[:arg])")
  try:
    module = config_module(path)
  except (SyntaxError, ValueError, UnicodeDecodeError) as e:  # not Python source at all
    raise ConfigError(f"config file {path} cannot be read as Python ({type(e).__name__}: "
                      f"{getattr(e, 'msg', e)})") from None
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} defines no get_config(arg)")
  try:
    config = module.get_config(arg or None)
  except ConfigError:
    raise
  except (ValueError, KeyError, TypeError) as e:  # e.g. configs/annotated.py:res=abc
    raise ConfigError(f"config {spec}: its argument {arg!r} is refused ({type(e).__name__}: "
                      f"{e})") from e
  add_shared_keys(config)
  config.lock()  # unknown keys now raise instead of silently creating new fields
  for item in overrides:
    apply_override(config, item)
  validate(config)
  return config


# Keys every run accepts, whatever its config file sets: added where the file has none.
SHARED_KEYS = {
    # The weights a run starts from: a `rsjax convert` folder or an rsjax run's workdir; "" = a
    # fresh initialisation from train.seed (docs/training.md#transfer).
    "init": {"checkpoint": ""},
    # Parameters kept fixed (rsjax/trainable.py): globs of parameter paths, or the shorthands
    # image_tower, text_tower and base (all but LoRA / adapter parameters and the temperature).
    # frozen_dtype "bfloat16": frozen parameters held in bfloat16 on the devices (half their
    # memory), and a tower whose base is frozen as a whole computes in bfloat16.
    # async_checkpoints: a save copies the state to host memory and returns; the files are
    # written in the background while training goes on (benchmarks/checkpoint.py measures the
    # stall). step_timeout_s: a step (or save) of a multi-process run that takes longer stops
    # the process with an error naming the step (another process died or hangs); 0: off.
    # change_weight: a change encoder's (model.temporal) change / no-change head, trained by
    # binary cross-entropy on each pair's "changed" flag with this weight.
    "train": {"frozen": (), "frozen_dtype": "float32", "async_checkpoints": True,
              "step_timeout_s": 600.0, "change_weight": 1.0},
    # Distillation: a teacher (run workdir or converted folder) whose image-text softmax the
    # student matches, with this weight beside the contrastive loss.
    "distill": {"teacher": "", "weight": 1.0},
    # Robust training (rsjax/data/corruptions.py): with this probability a train image gets one
    # of `names` (empty: all ten) at a severity drawn from 1..max_severity; 0: off.
    "data": {"corruptions": {"probability": 0.0, "max_severity": 3, "names": ()}},
}


def add_shared_keys(config: ml_collections.ConfigDict) -> None:
  """Fills in SHARED_KEYS and the model section's keys from the model defaults (a config built
  from an older converted folder's model lacks the newer ones), leaving values a file sets."""
  from rsjax.models.registry import default_model_config  # the defaults live beside the model

  def fill(node: ml_collections.ConfigDict, defaults: dict) -> None:
    for key, value in defaults.items():
      if key not in node:
        node[key] = value
      elif isinstance(value, dict) and isinstance(node[key], ml_collections.ConfigDict):
        fill(node[key], value)

  with config.unlocked():
    fill(config, SHARED_KEYS)
    if "model" in config:
      fill(config.model, {k: v for k, v in default_model_config().to_dict().items()
                          if k in ("lora", "adapter")})


def _leaf_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for key, value in config.items():
    full = f"{prefix}{key}"
    keys.append(full)
    if isinstance(value, ml_collections.ConfigDict):
      keys.extend(_leaf_keys(value, full + "."))
  return keys


def _unknown_key(config: ml_collections.ConfigDict, key: str) -> ConfigError:
  close = difflib.get_close_matches(key, _leaf_keys(config), n=1)
  hint = f" (did you mean '{close[0]}'?)" if close else ""
  return ConfigError(f"unknown config key '{key}'{hint}")


def _coerce(key: str, text: str, current: Any) -> Any:
  """Turns override text into the type of the current value; raises ConfigError on mismatch."""
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if current is None:
      return text  # a None default accepts a plain string (e.g. a path)
    raise ConfigError(f"config key '{key}': cannot parse {text!r} as {type(current).__name__}") from None
  if current is None:
    return value
  if isinstance(current, bool):
    if not isinstance(value, bool):
      raise ConfigError(f"config key '{key}' expects a bool, got {text!r}")
    return value
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
    return type(current)(value)
  if type(value) is not type(current):
    raise ConfigError(
        f"config key '{key}' expects {type(current).__name__}, got {type(value).__name__} ({text!r})")
  return value


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
  """Applies one 'a.b.c=value' override in place."""
  key, sep, text = item.partition("=")
  if not sep:
    raise ConfigError(f"override {item!r} is not of the form key=value")
  node = config
  parts = key.strip().split(".")
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise _unknown_key(config, key.strip())
    if i == len(parts) - 1:
      current = node[part]
      if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"config key '{key}' is a section, not a value")
      with node.unlocked():
        node[part] = _coerce(key, text.strip(), current)
    else:
      node = node[part]


def _require(cond: bool, message: str) -> None:
  if not cond:
    raise ConfigError(message)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks values that would otherwise fail late (after compiling) or silently."""
  t = config.train
  _require(t.batch_size > 0, f"train.batch_size must be positive, got {t.batch_size}")
  _require(t.steps >= 0, f"train.steps must be >= 0, got {t.steps}")
  _require(0 <= t.warmup_steps <= max(t.steps, 1), f"train.warmup_steps ({t.warmup_steps}) must lie in [0, train.steps={t.steps}]")
  _require(t.learning_rate > 0, f"train.learning_rate must be positive, got {t.learning_rate}")
  _require(t.checkpoint_every >= 0, "train.checkpoint_every must be >= 0 (0: only at the end)")
  _require(t.get("step_timeout_s", 0) >= 0, "train.step_timeout_s must be >= 0 (0: no limit)")
  _require(t.get("nonfinite", "stop") in ("stop", "skip"),
           f"train.nonfinite must be 'stop' or 'skip', got {t.get('nonfinite')!r}")
  frozen = t.get("frozen", ())
  _require(isinstance(frozen, (tuple, list)) and all(isinstance(p, str) and p for p in frozen),
           f"train.frozen must be a tuple of parameter-path patterns, got {frozen!r}")
  if "distill" in config:
    _require(config.distill.weight >= 0, f"distill.weight must be >= 0, got {config.distill.weight}")
  m = config.model
  for tower in ("image", "text"):
    tc = m[tower]
    _require(tc.width % tc.heads == 0, f"model.{tower}.width ({tc.width}) must be divisible by "
             f"model.{tower}.heads ({tc.heads})")
  _require(config.data.image_size % m.image.patch_size == 0,
           f"data.image_size ({config.data.image_size}) must be divisible by "
           f"model.image.patch_size ({m.image.patch_size})")
  for axis in ("data", "fsdp", "tensor"):
    size = config.mesh[axis]
    _require(size == -1 or size >= 1, f"mesh.{axis} must be -1 (all remaining devices) or >= 1")


def check_data_paths(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError when a data path of the config is not there. Commands that read data
  (train, eval) call it at start-up; loading a config alone (plan, tests) does not need the data."""
  data = config.data
  for key in ("path", "data_dir", "image_root"):
    value = data.get(key, "")
    if key == "data_dir" and data.get("name") != "tfds":
      continue
    _require(not value or os.path.exists(value),
             f"data.{key}: {value} does not exist (data set '{data.get('name')}')")
  path = data.get("path", "")
  if (data.get("name") == "annotated" and data.get("format") == "captions_jsonl" and path
      and os.path.isdir(path) and not os.path.isfile(os.path.join(path, "captions.jsonl"))):
    hint = ("; its class folders are read with --set data.format=image_folder"
            if any(os.path.isdir(os.path.join(path, d)) for d in os.listdir(path)) else
            " (the folder is empty)" if not os.listdir(path) else "")
    raise ConfigError(f"data.path: {path} has no captions.jsonl{hint}")
