"""Export rsjax weights to other frameworks. `--format open_clip`: an open_clip state dict
(.safetensors / .pt) plus open_clip's model-config JSON, loadable with `open_clip.create_model`.

The weights come from a training run (the latest checkpoint in a workdir, read with the run's
config) or from a converted checkpoint folder (`rsjax convert`). The key mapping is the one
rsjax.convert uses for import, run backwards.
"""

from __future__ import annotations

import os

import numpy as np

FORMATS = ("open_clip",)


def params_from_run(config, workdir: str) -> tuple[dict[str, np.ndarray], int]:
  """(flat params of the latest checkpoint in `workdir`, its step)."""
  import flax
  import jax

  from rsjax import parallel
  from rsjax.checkpoint import Checkpointer
  from rsjax.train import create_model, make_optimizer, state_layout

  mesh = parallel.make_mesh(config)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  step = ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
  abstract, _ = state_layout(create_model(config), make_optimizer(config.train), config, mesh)
  state = ckpt.restore(step, abstract, config=config)
  ckpt.close()
  flat = flax.traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
  return {k: np.asarray(v, np.float32) for k, v in flat.items()}, step


def export(fmt: str, out: str, *, config=None, workdir: str | None = None,
           converted: str | None = None, log=print) -> tuple[str, str]:
  """Writes the weights in format `fmt`; returns (weights path, model-config path)."""
  from rsjax import convert

  if fmt not in FORMATS:
    raise ValueError(f"unknown export format {fmt!r}, choose from {FORMATS}")
  if converted:
    info, model_cfg, flat = convert.load_converted(converted)
    image_size = info["image_size"]
  else:
    flat, step = params_from_run(config, workdir)
    model_cfg, image_size = config.model, config.data.image_size
    log(f"export: step {step} of {workdir}")
  state = convert.to_open_clip(flat, model_cfg)
  return convert.save_open_clip(state, model_cfg, image_size, out, log=log)
