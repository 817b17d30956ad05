"""Parameter-efficient fine-tuning: LoRA on the transformer projections and a bottleneck adapter
after every block (config keys `model.lora`, `model.adapter`), and merging LoRA into plain weights.

LoRA (Hu et al. 2021) adds (alpha / rank) * (x @ A) @ B beside a projection W; a bottleneck
adapter (Houlsby et al. 2019) adds x + up(act(down(x))) after a block's MLP residual. B and up
start at zero, so a model with either computes exactly what it computed without.

Parameter names (what `is_peft_param` and rsjax/trainable.py's `base` recognise):
  attn/qkv_lora_a [D, r]        attn/qkv_lora_b [r, 3, H, Dh]   (beside qkv_kernel [D, 3, H, Dh])
  attn/out_lora_a [H, Dh, r]    attn/out_lora_b [r, D]          (beside out_kernel [H, Dh, D])
  mlp/fc1_lora_a [D, r]         mlp/fc1_lora_b [r, F]           (beside mlp/fc1/kernel [D, F])
  mlp/fc2_lora_a [F, r]         mlp/fc2_lora_b [r, D]           (beside mlp/fc2/kernel [F, D])
  adapter/down/{kernel [D, d], bias [d]}, adapter/up/{kernel [d, D], bias [D]}
A scanned encoder (model.scan) stacks each on a leading layer axis.
"""

from __future__ import annotations

import dataclasses

import flax
import ml_collections
import numpy as np

from rsjax.errors import ConfigError, InputError

TARGETS = ("fc1", "fc2", "out", "qkv")
TOWERS = ("image", "text")


@dataclasses.dataclass(frozen=True)
class Settings:
  """What one tower adds to its blocks (hashable: it is a flax module attribute).

  lora_targets: a sorted subset of TARGETS; LoRA is on where lora_rank > 0. adapter_dim > 0 adds
  the bottleneck adapter.
  """
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ()
  adapter_dim: int = 0

  def lora(self, target: str) -> bool:
    """Whether projection `target` (one of TARGETS) carries LoRA."""
    return self.lora_rank > 0 and target in self.lora_targets

  @property
  def lora_scale(self) -> float:
    return self.lora_alpha / self.lora_rank


OFF = Settings()


def _names(value, key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
  if isinstance(value, str):  # a bare string from an override would otherwise split into letters
    value = (value,)
  value = tuple(value)
  for name in value:
    if name not in allowed:
      raise ConfigError(f"config key '{key}': unknown {name!r} (choose from {', '.join(allowed)})")
  return tuple(sorted(set(value)))


def _size(value, key: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ConfigError(f"config key '{key}': must be an integer >= 0 (0 = off), got {value!r}")
  return int(value)


def validate(model_config) -> None:
  """Raises ConfigError naming the key for a bad model.lora / model.adapter setting."""
  settings_for(model_config, "image")


def settings_for(model_config, tower: str) -> Settings:
  """The Settings of `tower` ("image" or "text") from a `model` config section (OFF where the
  section predates model.lora / model.adapter)."""
  lora = model_config.get("lora", None) or {}
  adapter = model_config.get("adapter", None) or {}
  rank = _size(lora.get("rank", 0), "model.lora.rank")
  alpha = lora.get("alpha", 16.0)
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
    raise ConfigError(f"config key 'model.lora.alpha': must be a number > 0, got {alpha!r}")
  targets = _names(lora.get("targets", ("qkv", "out")), "model.lora.targets", TARGETS)
  lora_towers = _names(lora.get("towers", TOWERS), "model.lora.towers", TOWERS)
  dim = _size(adapter.get("dim", 0), "model.adapter.dim")
  adapter_towers = _names(adapter.get("towers", TOWERS), "model.adapter.towers", TOWERS)
  on = rank > 0 and tower in lora_towers and bool(targets)
  return Settings(lora_rank=rank if on else 0, lora_alpha=float(alpha),
                  lora_targets=targets if on else (),
                  adapter_dim=dim if tower in adapter_towers else 0)


def is_lora_param(path: str) -> bool:
  return "lora_" in path.split("/")[-1]


def is_adapter_param(path: str) -> bool:
  return "adapter" in path.split("/")[:-1]


def is_peft_param(path: str) -> bool:
  """Whether a '/'-joined parameter path (e.g. 'image/encoder/block0/attn/qkv_lora_a') is a LoRA
  or bottleneck-adapter parameter."""
  return is_lora_param(path) or is_adapter_param(path)


def count(params) -> dict[str, int]:
  """{'peft': n, 'base': m}: the number of LoRA / adapter parameters and of all the others."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
  sizes = {k: int(np.prod(np.shape(v))) for k, v in flat.items()}
  peft = sum(n for k, n in sizes.items() if is_peft_param(k))
  return {"peft": peft, "base": sum(sizes.values()) - peft}


# target -> (base kernel path relative to the module holding the LoRA leaves, einsum of A and B
# into the base kernel's layout; "..." is a scanned encoder's leading layer axis).
_MERGE = {
    "qkv": ("qkv_kernel", "...dr,...rshk->...dshk"),
    "out": ("out_kernel", "...hkr,...rd->...hkd"),
    "fc1": ("fc1/kernel", "...dr,...rf->...df"),
    "fc2": ("fc2/kernel", "...fr,...rd->...fd"),
}


def merge_lora(params: dict, model_config) -> tuple[dict, ml_collections.ConfigDict]:
  """Nested params with LoRA -> (params with each delta (alpha / r) A @ B added into its base
  kernel and the lora_* leaves gone, a copy of `model_config` with lora.rank = 0).

  Merged kernels come back as numpy arrays in their own dtype (the sum in float64); every other
  leaf is returned as given. Raises InputError for adapter parameters (they cannot be merged).
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
  adapters = sorted(k for k in flat if is_adapter_param(k))
  if adapters:
    raise InputError(f"model.adapter: a bottleneck adapter adds layers open_clip does not have; "
                     f"it cannot be merged into plain weights ({len(adapters)} adapter parameters, "
                     f"e.g. {adapters[0]}); train with model.lora instead to export")
  lora = model_config.get("lora", None) or {}
  rank, alpha = int(lora.get("rank", 0)), float(lora.get("alpha", 16.0))
  out = {k: v for k, v in flat.items() if not is_lora_param(k)}
  for path in sorted(k for k in flat if k.endswith("_lora_a")):
    parent, leaf = path.rsplit("/", 1)
    target = leaf[:-len("_lora_a")]
    if target not in _MERGE:
      raise InputError(f"{path}: unknown LoRA target {target!r} (known: {', '.join(TARGETS)})")
    kernel_name, spec = _MERGE[target]
    kernel_path, b_path = f"{parent}/{kernel_name}", f"{parent}/{target}_lora_b"
    if kernel_path not in flat or b_path not in flat:
      raise InputError(f"{path}: LoRA parameter without {kernel_path if kernel_path not in flat else b_path}")
    a, b = np.asarray(flat[path], np.float64), np.asarray(flat[b_path], np.float64)
    if a.shape[-1] != rank:
      raise InputError(f"config key 'model.lora.rank': is {rank}, but {path} has rank "
                       f"{a.shape[-1]} (the config the parameters were trained with is needed)")
    kernel = np.asarray(flat[kernel_path])
    delta = np.einsum(spec, a, b) * (alpha / rank)
    out[kernel_path] = (kernel.astype(np.float64) + delta).astype(kernel.dtype)
  # A _lora_b without its _lora_a would otherwise be dropped without a word.
  orphans = sorted(k for k in flat if k.endswith("_lora_b")
                   and k[:-len("_lora_b")] + "_lora_a" not in flat)
  if orphans:
    raise InputError(f"{orphans[0]}: LoRA parameter without its _lora_a")
  merged_config = model_config.copy_and_resolve_references()
  if "lora" in merged_config:
    with merged_config.unlocked():
      merged_config.lora.rank = 0
  return flax.traverse_util.unflatten_dict(out, sep="/"), merged_config
