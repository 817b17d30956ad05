"""A tiny trained change encoder and a pair index over RS-Synth temporal pairs, made once per test
session (conftest.py's `change_run` and `pair_index` fixtures) for the change, resume, index and
serve tests."""

import os

CHANGE_CONFIG = "configs/rs_synth_change.py:runlocal"
PAIRS = 6  # pairs in the shared pair index


def tiny_change_overrides(*extra: str) -> list[str]:
  from helpers import TINY
  keep = [o for o in TINY if o.startswith(("model.", "data.image_size"))]
  return keep + ["data.num_train=32", "data.num_val=8", "data.num_test=16", "train.steps=4",
                 "train.checkpoint_every=2", "model.temporal.heads=2", "model.hashing.bits=16",
                 *extra]


def train_change_run(tmp) -> tuple[dict, str, list[str]]:
  """A change encoder trained 4 steps in tmp (checkpoints at 2 and 4): (its final results,
  workdir, the config's overrides)."""
  from rsjax.config import load_config
  from rsjax.train import loop as train_loop

  overrides = tiny_change_overrides("data.cache_dir=" + str(tmp))
  workdir = str(tmp / "run")
  return train_loop.train(load_config(CHANGE_CONFIG, overrides), workdir), workdir, overrides


def write_pairs(root, n: int = PAIRS, size: int = 32) -> tuple[str, str]:
  """n RS-Synth temporal pairs as PNG files root/before/NNN.png and root/after/NNN.png."""
  from PIL import Image

  from rsjax.data.rs_synth.temporal_splits import TemporalSplitSpec, render_temporal_example

  spec = TemporalSplitSpec(image_size=size)
  for i in range(n):
    dates, _ = render_temporal_example(spec, "test", i)
    for side, image in zip(("before", "after"), dates):
      os.makedirs(root / side, exist_ok=True)
      Image.fromarray(image).save(root / side / f"{i:03d}.png")
  return str(root / "before"), str(root / "after")


def index_command(change_run) -> list[str]:
  """`rsjax index` over the change run's checkpoint, before --pairs / --out."""
  _, workdir, overrides = change_run
  sets = [x for o in overrides for x in ("--set", o)]
  return ["index", "--config", CHANGE_CONFIG, *sets, "--checkpoint", workdir, "--quiet"]


def build_pair_index(change_run, tmp) -> tuple[str, str, str]:
  """`rsjax index --pairs` over PAIRS written pairs: (index folder, before folder, after folder)."""
  from rsjax import cli

  before, after = write_pairs(tmp)
  out = str(tmp / "index")
  if cli.main([*index_command(change_run), "--pairs", before, after, "--out", out]) != 0:
    raise RuntimeError("rsjax index --pairs failed; see its message above")
  return out, before, after
