"""Arguments and config loading shared by the subcommands that take a config file."""

from __future__ import annotations

import argparse


def add_config_args(p: argparse.ArgumentParser, workdir: bool = True) -> None:
  p.add_argument("--config", required=True, help="configs/NAME.py[:arg], e.g. configs/smoke.py:runlocal")
  if workdir:
    p.add_argument("--workdir", required=True, help="run directory: checkpoints, metrics, eval results")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override a config value, e.g. --set train.steps=100 (repeatable)")


def load_config_or_exit(args: argparse.Namespace, needs_data: bool = False):
  """The config named by --config and --set; a ConfigError (exit 2 at the CLI's boundary)
  otherwise. `needs_data`: also refuse data paths that do not exist (for commands that read the
  data)."""
  from rsjax.config import check_data_paths, load_config

  config = load_config(args.config, args.set)
  if needs_data:
    check_data_paths(config)
  return config
