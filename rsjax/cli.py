"""The `rsjax` command line: train | eval (more subcommands arrive with their issues)."""

from __future__ import annotations

import argparse
import os
import sys


def _add_config_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--config", required=True, help="configs/NAME.py[:arg], e.g. configs/smoke.py:runlocal")
  p.add_argument("--workdir", required=True, help="run directory: checkpoints, metrics, eval results")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override a config value, e.g. --set train.steps=100 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="rsjax", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  _add_config_args(sub.add_parser("train", help="train (resumes when WORKDIR has a checkpoint), then evaluate"))
  _add_config_args(sub.add_parser("eval", help="evaluate the latest checkpoint in WORKDIR"))
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  from rsjax.config import ConfigError, load_config  # imported late: --help stays fast

  try:
    config = load_config(args.config, args.set)
  except ConfigError as e:
    print(f"rsjax: config error: {e}", file=sys.stderr)
    return 2
  workdir = os.path.abspath(args.workdir)
  if args.command == "train":
    from rsjax.train import train
    train(config, workdir)
  elif args.command == "eval":
    from rsjax.train import evaluate_workdir
    evaluate_workdir(config, workdir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
