"""`load_init_params`: a converted folder's weights as the starting parameters of a training run
(`init.checkpoint`), after checking that the folder's model and the run's model are the same.
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
# check already covers): they may differ between a converted checkpoint and a run's config.
_FREE_MODEL_KEYS = ("dtype", "remat", "scan", "init_logit_scale", "init_logit_bias")
_FREE_PREFIXES = ("image.pyramid.", "hashing.")


def load_init_params(directory: str, config, abstract_params, log=print):
  """The parameters of converted checkpoint `directory`, laid out (shapes, shardings) as
  `abstract_params`, for `init.checkpoint`. Raises ConversionError naming every model config key
  and every parameter in which the checkpoint and the run differ."""
  info, _, flat = load_converted(directory)
  # A key one side lacks (written before the key existed) counts as its default value.
  defaults = flat_config(default_model_config().to_dict())
  ours = {**defaults, **flat_config(config.model.to_dict())}
  theirs = {**defaults, **flat_config(info["model"])}
  free = lambda k: k in _FREE_MODEL_KEYS or k.startswith(_FREE_PREFIXES)
  problems = [f"model.{k}: checkpoint {theirs.get(k)!r}, config {ours.get(k)!r}"
              for k in sorted(ours.keys() | theirs.keys())
              if not free(k) and ours.get(k) != theirs.get(k)]
  target = flax.traverse_util.flatten_dict(abstract_params, sep="/")
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
  problems += [f"{k}: checkpoint {tuple(flat[k].shape)}, model {wanted[k]}"
               for k in sorted(wanted.keys() & flat.keys()) if tuple(flat[k].shape) != wanted[k]]
  problems += [f"{k}: not in the checkpoint" for k in sorted(wanted.keys() - flat.keys())]
  problems += [f"{k}: in the checkpoint, not in the model" for k in sorted(flat.keys() - wanted.keys())]
  if problems:
    hint = ("\nuse the converted model's settings (see its converted.json), e.g. "
            f"--config configs/finetune_clip_rsicd.py:init={directory}")
    raise ConversionError(f"init.checkpoint {directory} does not fit this run:" + listed(problems)
                          + hint)
  placed = {k: jax.device_put(flat[k].astype(target[k].dtype), target[k].sharding)
            if getattr(target[k], "sharding", None) is not None else flat[k] for k in target}
  log(f"init: {len(placed)} parameters from {directory} ({info['arch']})")
  return flax.traverse_util.unflatten_dict(placed, sep="/")
