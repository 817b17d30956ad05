"""Starting parameters from another model's weights (`init.checkpoint`): `fit_params` lays a flat
{path: array} of weights out as a run's parameter tree after checking that both are the same model;
`load_init_params` does it for a folder written by `rsjax convert`.

A run may add modules the weights do not have: LoRA and adapter parameters (model.lora,
model.adapter), a hashing head, the feature pyramid. Those keep their fresh initialisation (all of
them start as the identity or a separate head, so the weights compute what they computed before);
anything else missing or misshapen is refused, every offending key named.
"""

from __future__ import annotations

import math

import flax
import jax

from rsjax.convert.errors import ConversionError, listed
from rsjax.convert.folder import load_converted
from rsjax.convert.infer import flat_config
from rsjax.convert.keymap import scan_layout
from rsjax.models.registry import default_model_config
from rsjax.models.vit import interpolate_pos_embed

# Model keys that change neither the parameters nor what they compute (or that the parameter
# check already covers): they may differ between the weights and a run's config.
_FREE_MODEL_KEYS = ("dtype", "remat", "scan", "init_logit_scale", "init_logit_bias")
_FREE_PREFIXES = ("image.pyramid.", "hashing.", "lora.", "adapter.")


def is_added_module(path: str) -> bool:
  """A parameter of a module a run may add on top of given weights (see the module docstring)."""
  parts = path.split("/")
  return ("adapter" in parts[:-1] or "lora_" in parts[-1] or parts[0] in ("image_hash", "text_hash")
          or path.startswith("image/pyramid/"))


def fit_params(flat: dict, source_model: dict, config, target, origin: str, log=print,
               fresh=None, hint: str = ""):
  """`flat` ({path: numpy array}, written for the model config dict `source_model`) laid out
  (shapes, shardings) as `target` (the run's nested parameters, abstract or concrete).

  `fresh`: the run's freshly initialised parameters (nested, concrete), which fill the parameters
  of added modules; without it those are refused too. Raises ConversionError naming every model
  config key and every parameter in which the weights and the run differ.
  """
  # A key one side lacks (written before the key existed) counts as its default value.
  defaults = flat_config(default_model_config().to_dict())
  ours = {**defaults, **flat_config(config.model.to_dict())}
  theirs = {**defaults, **flat_config(source_model)}
  free = lambda k: k in _FREE_MODEL_KEYS or k.startswith(_FREE_PREFIXES)
  problems = [f"model.{k}: checkpoint {theirs.get(k)!r}, config {ours.get(k)!r}"
              for k in sorted(ours.keys() | theirs.keys())
              if not free(k) and ours.get(k) != theirs.get(k)]
  flat = dict(flat)
  target = flax.traverse_util.flatten_dict(target, sep="/")
  wanted = {k: tuple(v.shape) for k, v in target.items()}
  # A run at another image size keeps the weights: the position table [1 + g*g, D] is resized.
  pos = "image/pos_embed"
  if pos in flat and pos in wanted and flat[pos].shape != wanted[pos]:
    grid = int(round(math.sqrt(wanted[pos][0] - 1)))
    if grid * grid == wanted[pos][0] - 1 and flat[pos].shape[1] == wanted[pos][1]:
      log(f"init: resizing {pos} {flat[pos].shape} -> {wanted[pos]} (bicubic) for "
          f"data.image_size={config.data.image_size}")
      flat[pos] = interpolate_pos_embed(flat[pos], (grid, grid))
  flat = scan_layout(flat, wanted) if config.model.scan else flat
  added = sorted(k for k in wanted.keys() - flat.keys() if fresh is not None and is_added_module(k))
  dropped = sorted(k for k in flat.keys() - wanted.keys() if is_added_module(k))
  problems += [f"{k}: checkpoint {tuple(flat[k].shape)}, model {wanted[k]}"
               for k in sorted(wanted.keys() & flat.keys()) if tuple(flat[k].shape) != wanted[k]]
  problems += [f"{k}: not in the checkpoint"
               for k in sorted(wanted.keys() - flat.keys() - set(added))]
  problems += [f"{k}: in the checkpoint, not in the model"
               for k in sorted(flat.keys() - wanted.keys() - set(dropped))]
  if problems:
    raise ConversionError(f"init.checkpoint {origin} does not fit this run:" + listed(problems)
                          + hint)
  fresh_flat = flax.traverse_util.flatten_dict(fresh, sep="/") if added else {}
  placed = {}
  for k in target:
    if k in fresh_flat and k not in flat:
      placed[k] = fresh_flat[k]
    elif getattr(target[k], "sharding", None) is not None:
      placed[k] = jax.device_put(flat[k].astype(target[k].dtype), target[k].sharding)
    else:
      placed[k] = flat[k]
  log(f"init: {len(placed) - len(added)} parameters from {origin}"
      + (f"; {len(added)} of modules it lacks initialised afresh (LoRA, adapters, hashing head, "
         "pyramid)" if added else "")
      + (f"; {len(dropped)} of modules this run lacks left out" if dropped else ""))
  return flax.traverse_util.unflatten_dict(placed, sep="/")


def load_init_params(directory: str, config, abstract_params, log=print, fresh=None):
  """The parameters of converted checkpoint `directory`, laid out as `abstract_params`, for
  `init.checkpoint` (see fit_params)."""
  info, _, flat = load_converted(directory)
  hint = ("\nuse the converted model's settings (see its converted.json), e.g. "
          f"--config configs/finetune_clip_rsicd.py:init={directory}")
  return fit_params(flat, info["model"], config, abstract_params, f"{directory} ({info['arch']})",
                    log, fresh=fresh, hint=hint)
