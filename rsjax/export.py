"""Export rsjax weights to other frameworks. `--format open_clip`: an open_clip state dict
(.safetensors / .pt) plus open_clip's model-config JSON, loadable with `open_clip.create_model`.

The weights come from a training run (the latest checkpoint in a workdir, read with the run's
config) or from a converted checkpoint folder (`rsjax convert`). The key mapping is the one
rsjax.convert uses for import, run backwards. A model with LoRA (model.lora) is exported with each
delta merged into its base weights, so the file has exactly open_clip's tensors; a bottleneck
adapter (model.adapter) has no open_clip counterpart and is refused before anything is read.
"""

from __future__ import annotations

import flax
import jax
import numpy as np

from rsjax import parallel, runs
from rsjax.errors import InputError
from rsjax.models import peft

FORMATS = ("open_clip",)


def params_from_run(config, workdir: str) -> tuple[dict[str, np.ndarray], int]:
  """(flat params of the latest checkpoint in `workdir`, its step)."""
  mesh = parallel.make_mesh(config)
  _, params, step = runs.load_model(config, workdir, mesh, check_config=True)
  flat = flax.traverse_util.flatten_dict(jax.device_get(params), sep="/")
  return {k: np.asarray(v, np.float32) for k, v in flat.items()}, step


def export(fmt: str, out: str, *, config=None, workdir: str | None = None,
           converted: str | None = None, log=print) -> tuple[str, str]:
  """Writes the weights in format `fmt`; returns (weights path, model-config path)."""
  from rsjax import convert
  from rsjax.convert.export_open_clip import check_weights_path

  if fmt not in FORMATS:
    raise InputError(f"--format: unknown export format {fmt!r}, choose from {FORMATS}")
  check_weights_path(out)  # before reading any weights
  if converted:
    info, model_cfg, flat = convert.load_converted(converted)
    image_size = info["image_size"]
  else:
    _refuse_adapters(config.model)  # before reading the checkpoint
    flat, step = params_from_run(config, workdir)
    model_cfg, image_size = config.model, config.data.image_size
    log(f"export: step {step} of {workdir}")
  flat, model_cfg = merge_for_export(flat, model_cfg, log=log)
  weights = convert.to_open_clip(flat, model_cfg)
  return convert.save_open_clip(weights, model_cfg, image_size, out, log=log)


def _refuse_adapters(model_cfg) -> None:
  adapter = model_cfg.get("adapter", None) or {}
  if adapter.get("dim", 0):
    raise InputError(f"config key 'model.adapter.dim': is {adapter.get('dim')}; a bottleneck "
                     "adapter adds layers open_clip does not have, and it cannot be merged into "
                     "plain weights (fine-tune with model.lora to export)")


def merge_for_export(flat: dict[str, np.ndarray], model_cfg, log=print):
  """(flat params, model config) with any LoRA merged into the base kernels (peft.merge_lora) and
  lora.rank 0; unchanged without LoRA. Raises InputError for adapter parameters."""
  _refuse_adapters(model_cfg)
  if not any(peft.is_peft_param(k) for k in flat):
    return flat, model_cfg
  nested, merged_cfg = peft.merge_lora(flax.traverse_util.unflatten_dict(flat, sep="/"), model_cfg)
  merged = flax.traverse_util.flatten_dict(nested, sep="/")
  log(f"export: merged LoRA (rank {model_cfg.lora.rank}) into {(len(flat) - len(merged)) // 2} "
      "base kernels")
  return {k: np.asarray(v, np.float32) for k, v in merged.items()}, merged_cfg
