"""The `rsjax` command line. Each subcommand lives in rsjax/commands/<name>.py."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from rsjax import errors

# Order is the order of `rsjax --help`. A new subcommand adds its module name here.
COMMANDS = ("train", "eval", "index", "search", "explain", "serve", "report", "data", "convert",
            "export", "plan")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="rsjax", description="Cross-modal image-text retrieval for remote sensing.")
  sub = parser.add_subparsers(dest="command", required=True)
  for name in COMMANDS:
    importlib.import_module(f"rsjax.commands.{name}").register(sub)
  return parser


def main(argv: list[str] | None = None) -> int:
  """The `rsjax` command; argv None: this process's command line (restarted once with huge pages
  for XLA:CPU's buffers, rsjax/host_memory.py; the CPU split into RSJAX_CPU_DEVICES devices where
  set, rsjax/host_devices.py)."""
  if argv is None:
    from rsjax import host_devices, host_memory
    host_memory.restart_with_huge_pages()
    try:
      host_devices.use_cpu_devices()
    except ValueError as e:
      print(f"rsjax: {e}", file=sys.stderr)
      return 2
  args = build_parser().parse_args(argv)
  # The one error boundary of the command line (rsjax/errors.py): a user's error is one line and
  # exit 2 or 1, a bug says so; no command prints its own tracebacks or exit codes for these.
  try:
    return args.run(args)
  except SystemExit as e:  # a command's clean refusal (one line on stderr) -> its exit code
    return e.code if isinstance(e.code, int) else 1
  except KeyboardInterrupt:
    print(f"rsjax {command_name(args)}: interrupted", file=sys.stderr)
    return 130
  except Exception as e:  # noqa: BLE001  every exception ends here, reported by errors.report
    code = errors.report(e, command_name(args), sys.stderr)
    # In a multi-process run, orbax's and JAX's threads may wait for a lost peer: do not join them.
    distributed = getattr(sys.modules.get("jax"), "distributed", None)
    multi_process = bool(distributed and distributed.is_initialized())
    if getattr(e, "exit_now", False) or multi_process:
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(code)
    return code


def command_name(args: argparse.Namespace) -> str:
  """'train', or 'data prepare' for a subcommand with actions."""
  return " ".join(filter(None, (args.command, getattr(args, "action", None))))


if __name__ == "__main__":
  sys.exit(main())
