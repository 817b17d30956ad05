"""`rsjax export`: rsjax weights -> another framework's format (open_clip)."""

from __future__ import annotations

import os

from rsjax.commands.common import load_config_or_exit
from rsjax.errors import InputError


def run(args) -> int:
  from rsjax.export import export

  if bool(args.converted) == bool(args.workdir):
    raise InputError("give either --workdir (with --config) or --converted")
  config = None
  if args.workdir:
    if not args.config:
      raise InputError("--workdir needs the run's --config")
    if not os.path.isdir(args.workdir):
      raise InputError(f"--workdir {args.workdir} is not a folder; give a training run's folder")
    config = load_config_or_exit(args)
  # ConversionError, checkpoint errors and missing files name the file; rsjax.cli reports them.
  export(args.format, args.out, config=config,
         workdir=os.path.abspath(args.workdir) if args.workdir else None,
         converted=args.converted)
  return 0


def register(sub) -> None:
  p = sub.add_parser("export", help="export weights, e.g. to open_clip",
                     description="Writes the latest checkpoint of a run (--config, --workdir) or a "
                                 "converted checkpoint (--converted) as an open_clip state dict "
                                 "(OUT: .safetensors, .pt or .bin) plus OUT's stem + .json, "
                                 "open_clip's model config.")
  p.add_argument("--format", required=True, choices=("open_clip",))
  p.add_argument("--out", required=True, help="weights file: NAME.safetensors, NAME.pt or NAME.bin")
  p.add_argument("--config", default=None, help="the run's config (with --workdir)")
  p.add_argument("--workdir", default=None, help="a training run's folder")
  p.add_argument("--converted", default=None, help="a folder written by `rsjax convert`")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="config override, as given to the run (repeatable)")
  p.set_defaults(run=run)
