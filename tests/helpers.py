"""Small configs shared by tests."""

import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from rsjax.config import load_config  # noqa: E402

SMOKE = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "smoke.py")


# The smoke config shrunk to a model that compiles and steps in about a second.
TINY = [
    "data.image_size=32", "data.num_train=64", "data.num_val=8", "data.num_test=16",
    "model.embed_dim=16",
    "model.image.width=32", "model.image.depth=1", "model.image.heads=2", "model.image.patch_size=8",
    "model.text.width=32", "model.text.depth=1", "model.text.heads=2",
    "train.batch_size=16", "train.steps=6", "train.warmup_steps=2", "train.log_every=1",
    "train.checkpoint_every=2", "eval.batch_size=16",
]


def random_batches(seed: int, count: int, size: int = 16) -> list[dict]:
  """`count` batches of `size` random 32 px images and 10-token captions (end-of-text 3, padding)
  for TINY-sized models."""
  rng = np.random.default_rng(seed)
  return [{"image": rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8),
           "tokens": np.concatenate([rng.integers(4, 200, (size, 10)), np.full((size, 1), 3),
                                     np.zeros((size, 13), int)], 1).astype(np.int32)}
          for _ in range(count)]


def tiny_config(*overrides: str):
  """The TINY config, with further 'key=value' overrides."""
  return load_config(SMOKE, TINY + list(overrides))


def cli_sets(*overrides: str) -> list[str]:
  """TINY plus `overrides` as command-line `--set` pairs."""
  return [x for item in TINY + list(overrides) for x in ("--set", item)]


def final_state(config, workdir):
  """(step, params on the host) of a run's latest checkpoint, restored by the config's layout."""
  import os

  import jax

  from rsjax import optim, parallel, state as state_lib
  from rsjax.checkpoint import Checkpointer

  mesh = parallel.make_mesh(config)
  model = state_lib.create_model(config)
  abstract, _ = state_lib.state_layout(model, optim.make_optimizer(config.train), config, mesh)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  state = ckpt.restore(ckpt.latest_step(), abstract)
  ckpt.close()
  return int(state.step), jax.device_get(state.params)
