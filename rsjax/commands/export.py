"""`rsjax export`: rsjax weights -> another framework's format (open_clip)."""

from __future__ import annotations

import os
import sys

from rsjax.commands.common import load_config_or_exit


def run(args) -> int:
  from rsjax.convert import ConversionError
  from rsjax.export import export

  if bool(args.converted) == bool(args.workdir):
    print("rsjax: export: give either --workdir (with --config) or --converted", file=sys.stderr)
    raise SystemExit(2)
  config = None
  if args.workdir:
    if not args.config:
      print("rsjax: export: --workdir needs the run's --config", file=sys.stderr)
      raise SystemExit(2)
    config = load_config_or_exit(args)
  try:
    export(args.format, args.out, config=config,
           workdir=os.path.abspath(args.workdir) if args.workdir else None,
           converted=args.converted)
  except (ConversionError, FileNotFoundError) as e:
    print(f"rsjax: export: {e}", file=sys.stderr)
    raise SystemExit(2) from None
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
