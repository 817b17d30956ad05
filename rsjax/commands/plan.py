"""`rsjax plan`: per-chip memory, FLOPs and predicted speed of a config on a target mesh.

  rsjax plan --config configs/pretrain_vit_b16_siglip.py:v5e-256 --mesh 1,256,1 --chip v5e

The train step is compiled for prod(mesh) fake CPU devices; nothing runs. See rsjax/plan.py.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

from rsjax.commands.common import add_config_args, load_config_or_exit

_CHILD = "RSJAX_PLAN_CHILD"  # set in a re-executed child so it never re-executes again


def _fake_cpu_devices(n: int) -> bool:
  """Arranges n fake CPU devices for this process; False when jax already started with fewer."""
  from jax._src import xla_bridge

  import jax

  if xla_bridge.backends_are_initialized():
    return jax.devices()[0].platform == "cpu" and jax.device_count() >= n
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
  jax.config.update("jax_num_cpu_devices", n)  # takes precedence over the flag once set (cli.py)
  jax.config.update("jax_platforms", "cpu")  # plan on the CPU even where an accelerator is present
  return True


def _argv(args) -> list[str]:
  """The command line of `args` again, for the re-executed child."""
  argv = ["--config", args.config, "--mesh", args.mesh, "--chip", args.chip, "--mfu", str(args.mfu)]
  for item in args.set:
    argv += ["--set", item]
  if args.json:
    argv += ["--json", args.json]
  return argv + (["--strict"] if args.strict else [])


def run(args) -> int:
  from rsjax.errors import RsjaxError
  from rsjax.plan import format_plan, make_plan, parse_mesh

  mesh = parse_mesh(args.mesh)  # InputError naming --mesh; rsjax.cli reports it
  if not _fake_cpu_devices(math.prod(mesh)):
    if os.environ.get(_CHILD):
      raise RsjaxError(f"could not create the {math.prod(mesh)} fake CPU devices that --mesh "
                       f"{args.mesh} needs")
    # jax started earlier in this process with too few devices: plan in a fresh process.
    env = dict(os.environ, **{_CHILD: "1"})
    return subprocess.call([sys.executable, "-m", "rsjax.cli", "plan", *_argv(args)], env=env)
  config = load_config_or_exit(args)
  # Mesh, batch or divisibility problems raise ConfigError / InputError naming the key or
  # argument; rsjax.cli reports them (exit 2).
  plan, _ = make_plan(config, mesh, args.chip, args.mfu)
  title = f"rsjax plan: {args.config} {' '.join('--set ' + s for s in args.set)}".rstrip()
  print(format_plan(plan, title), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"config": args.config, "overrides": args.set, **plan.to_dict()}, f, indent=2)
  return 0 if plan.fits or not args.strict else 3


def register(sub) -> None:
  from rsjax.plan import CHIPS

  p = sub.add_parser("plan", help="per-chip memory, FLOPs and predicted step time on a target mesh "
                                  "(compiled ahead of time on fake CPU devices)")
  add_config_args(p, workdir=False)
  p.add_argument("--mesh", required=True, metavar="D,F,T",
                 help="target mesh sizes data,fsdp,tensor, e.g. 1,256,1 for FSDP over 256 chips")
  p.add_argument("--chip", default="v5p", choices=sorted(CHIPS),
                 help="chip whose memory and peak bf16 FLOP/s the plan is checked against")
  p.add_argument("--mfu", type=float, default=0.4,
                 help="assumed model FLOPs utilisation for the predicted step time (default 0.4)")
  p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
  p.add_argument("--strict", action="store_true", help="exit 3 when the plan does not fit")
  p.set_defaults(run=run)
