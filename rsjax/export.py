"""Export rsjax weights to other frameworks. `--format open_clip`: an open_clip state dict
(.safetensors / .pt) plus open_clip's model-config JSON, loadable with `open_clip.create_model`.

The weights come from a training run (the latest checkpoint in a workdir, read with the run's
config) or from a converted checkpoint folder (`rsjax convert`). The key mapping is the one
rsjax.convert uses for import, run backwards.
"""

from __future__ import annotations

import flax
import jax
import numpy as np

from rsjax import parallel, state
from rsjax.errors import InputError

FORMATS = ("open_clip",)


def params_from_run(config, workdir: str) -> tuple[dict[str, np.ndarray], int]:
  """(flat params of the latest checkpoint in `workdir`, its step)."""
  mesh = parallel.make_mesh(config)
  _, params, step = state.load_model(config, workdir, mesh, check_config=True)
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
    flat, step = params_from_run(config, workdir)
    model_cfg, image_size = config.model, config.data.image_size
    log(f"export: step {step} of {workdir}")
  weights = convert.to_open_clip(flat, model_cfg)
  return convert.save_open_clip(weights, model_cfg, image_size, out, log=log)
