"""`rsjax train`: train (resuming when the workdir has a checkpoint), then evaluate."""

from __future__ import annotations

import os

from rsjax.commands.common import add_config_args, load_config_or_exit


def run(args) -> int:
  config = load_config_or_exit(args, needs_data=True)
  from rsjax.train.loop import train

  train(config, os.path.abspath(args.workdir))  # errors: one line each, at rsjax.cli's boundary
  return 0


def register(sub) -> None:
  p = sub.add_parser("train", help="train (resumes when WORKDIR has a checkpoint), then evaluate")
  add_config_args(p)
  p.set_defaults(run=run)
