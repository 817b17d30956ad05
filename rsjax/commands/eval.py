"""`rsjax eval`: evaluate the latest checkpoint of a workdir."""

from __future__ import annotations

import os

from rsjax.commands.common import add_config_args, load_config_or_exit


def run(args) -> int:
  config = load_config_or_exit(args)
  from rsjax.train import evaluate_workdir

  evaluate_workdir(config, os.path.abspath(args.workdir))
  return 0


def register(sub) -> None:
  p = sub.add_parser("eval", help="evaluate the latest checkpoint in WORKDIR")
  add_config_args(p)
  p.set_defaults(run=run)
