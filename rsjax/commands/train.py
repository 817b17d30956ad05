"""`rsjax train`: train (resuming when the workdir has a checkpoint), then evaluate."""

from __future__ import annotations

import os
import sys

from rsjax.commands.common import add_config_args, load_config_or_exit


def run(args) -> int:
  config = load_config_or_exit(args, needs_data=True)
  from rsjax.checkpoint import CheckpointError
  from rsjax.data.records import BadRecordError
  from rsjax.parallel import MeshError
  from rsjax.train.guards import NonFiniteLossError
  from rsjax.train.loop import train

  try:
    train(config, os.path.abspath(args.workdir))
  except MeshError as e:  # a mesh that does not fit the devices or the batch: a config error
    print(f"rsjax: config error: {e}", file=sys.stderr)
    return 2
  except (CheckpointError, NonFiniteLossError, BadRecordError) as e:  # these name what and where
    print(f"rsjax: error: {type(e).__name__}: {e}", file=sys.stderr)
    return 1
  except ValueError as e:  # a config value refused once the data or model is seen
    if not str(e).startswith("config key"):
      raise
    print(f"rsjax: config error: {e}", file=sys.stderr)
    return 2
  return 0


def register(sub) -> None:
  p = sub.add_parser("train", help="train (resumes when WORKDIR has a checkpoint), then evaluate")
  add_config_args(p)
  p.set_defaults(run=run)
