"""The accelerator check's parts, run one after another with a time limit each, into one JSON.

Called by benchmarks/accelerator_check.sh (which first makes the Python packages rsjax needs
importable); see that script for usage. Parts:

  mfu     benchmarks/mfu.py: ViT-B/16 CLIP training step, bf16, batch 256 per device: MFU and
          the device's peak memory
  train   `rsjax train` on RS-Synth: 25 steps, then the 50-step run in the same workdir, which
          must resume from the step-25 checkpoint (restore onto the device, iterator included)
  search  benchmarks/search.py: binary (packed Hamming) and dense top-k on the device
  plan    `rsjax plan` of the MFU model's configuration on this chip, its per-device memory
          estimate set beside the peak memory the mfu part measured

A part that fails is recorded with its error and the others still run. --dry-run runs every part
on the CPU at toy sizes in a minute or two (tests/test_accelerator_check.py), so the script
cannot rot between the rare sessions that have an accelerator.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(REPO, "benchmarks")


def _python_env(results_dir: str, dry_run: bool) -> dict:
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO,
                                                                   os.environ.get("PYTHONPATH")])),
         "RSJAX_BENCH_RESULTS": results_dir, "PYTHONUNBUFFERED": "1"}
  if dry_run:
    env["JAX_PLATFORMS"] = "cpu"
  return env


def _run(cmd: list[str], env: dict, timeout_s: float, log_path: str) -> tuple[int, str]:
  """Runs `cmd`, its output to `log_path`; returns (exit status, output tail). 124: timed out."""
  with open(log_path, "w") as log:
    try:
      code = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            timeout=timeout_s, cwd=REPO).returncode
    except subprocess.TimeoutExpired:
      code = 124
  with open(log_path) as f:
    return code, f.read()[-2000:]


def _results(results_dir: str, name: str) -> dict:
  with open(os.path.join(results_dir, f"{name}.json")) as f:
    return json.load(f)


def part_mfu(ctx) -> dict:
  cmd = [sys.executable, os.path.join(HERE, "mfu.py")] + (["--quick"] if ctx.dry_run else [])
  code, tail = _run(cmd, ctx.env, ctx.limit(240), ctx.log("mfu"))
  if code:
    raise RuntimeError(f"mfu.py exited {code}:\n{tail}")
  return _results(ctx.results_dir, "mfu")["rows"][0]


def _train_command(workdir: str, steps: int, dry_run: bool) -> list[str]:
  sets = ["train.log_every=1", "train.checkpoint_every=1000", "data.num_train=2000",
          "data.num_val=100", "data.num_test=500", "eval.at_step0=False"]
  if dry_run:
    sets = ["train.log_every=1", "train.checkpoint_every=1000",
            "data.image_size=32", "data.num_train=64", "data.num_val=8", "data.num_test=16",
            "model.embed_dim=16", "model.image.width=32", "model.image.depth=1",
            "model.image.patch_size=8", "model.text.width=32", "model.text.depth=1",
            "train.batch_size=16", "train.warmup_steps=2", "eval.batch_size=16",
            "eval.at_step0=False"]
  return [sys.executable, "-m", "rsjax.cli", "train", "--config",
          os.path.join(REPO, "configs", "smoke.py"), "--workdir", workdir,
          *[x for s in [f"train.steps={steps}", *sets] for x in ("--set", s)]]


def part_train(ctx) -> dict:
  """Half the steps, then the whole run with the same workdir: it must resume at the half."""
  workdir = os.path.join(ctx.scratch, "train")
  total = 8 if ctx.dry_run else 50
  start = time.perf_counter()
  code, tail = _run(_train_command(workdir, total // 2, ctx.dry_run), ctx.env, ctx.limit(300),
                    ctx.log("train_first"))
  if code:
    raise RuntimeError(f"the first {total // 2} steps exited {code}:\n{tail}")
  code, tail = _run(_train_command(workdir, total, ctx.dry_run), ctx.env, ctx.limit(300),
                    ctx.log("train_resumed"))
  if code or f"resumed from checkpoint at step {total // 2}" not in tail:
    raise RuntimeError(f"the resumed run exited {code} or did not resume at step "
                       f"{total // 2}:\n{tail}")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [r for r in map(json.loads, f) if "images_per_s" in r]
  # Leave out each run's first step (compilation) from the throughput.
  rates = sorted(r["images_per_s"] for r in rows if r["step"] not in (1, total // 2 + 1))
  with open(os.path.join(workdir, "eval.json")) as f:
    evaluated = json.load(f)
  return {"steps": total, "resumed_at_step": total // 2, "steps_logged": len(rows),
          "median_images_per_s": rates[len(rates) // 2] if rates else None,
          "final_loss": rows[-1]["loss"], "test_mR": evaluated["mR"],
          "wall_s": round(time.perf_counter() - start, 1)}


def part_search(ctx) -> dict:
  rows = ["--rows", "20000", "--dim", "64", "--min-time", "0.2"] if ctx.dry_run else \
      ["--rows", "1000000", "--min-time", "1.0"]
  cmd = [sys.executable, os.path.join(HERE, "search.py"), "--sections", "binary,dense", *rows]
  code, tail = _run(cmd, ctx.env, ctx.limit(240), ctx.log("search"))
  if code:
    raise RuntimeError(f"search.py exited {code}:\n{tail}")
  return {"rows": _results(ctx.results_dir, "search")["rows"]}


def part_plan(ctx, mfu: dict | None) -> dict:
  from benchmarks.mfu import datasheet_chip  # noqa: PLC0415  (jax only: fine on a bare machine)
  import jax

  chip = datasheet_chip(jax.devices()[0]) or "h100"
  out = os.path.join(ctx.scratch, "plan.json")
  if ctx.dry_run:  # the toy model of the train part
    config = os.path.join(REPO, "configs", "smoke.py")
    sets = [s for s in _train_command("", 1, True)[7:] if s != "--set" and s.startswith(
        ("model.", "data.image_size", "train.batch_size"))]
  else:  # the MFU model: ViT-B/16 and CLIP's text tower, 256 images on one device, no remat
    config = os.path.join(REPO, "configs", "pretrain_vit_b16_siglip.py")
    sets = ["train.batch_size=256", "model.remat=none", "model.dtype=bfloat16"]
  cmd = [sys.executable, "-m", "rsjax.cli", "plan", "--config", config, "--mesh", "1,1,1",
         "--chip", chip, "--json", out, *[x for s in sets for x in ("--set", s)]]
  code, tail = _run(cmd, ctx.env, ctx.limit(240), ctx.log("plan"))
  if code not in (0, 3):  # 3: does not fit, still a plan
    raise RuntimeError(f"rsjax plan exited {code}:\n{tail}")
  with open(out) as f:
    plan = json.load(f)
  measured = (mfu or {}).get("peak_memory_GiB")
  return {"chip": chip, "plan": plan, "measured_peak_memory_GiB": measured,
          "note": "plan: SigLIP loss of the pretraining config; mfu: CLIP softmax loss, same towers"}


class Context:
  def __init__(self, dry_run: bool, budget_s: float):
    self.dry_run, self.deadline = dry_run, time.monotonic() + budget_s
    self.scratch = tempfile.mkdtemp(prefix="rsjax_accel_")
    self.results_dir = os.path.join(self.scratch, "results")
    os.makedirs(self.results_dir)
    self.env = _python_env(self.results_dir, dry_run)

  def limit(self, seconds: float) -> float:
    """A part's limit, cut to what remains of the whole check's budget."""
    return max(5.0, min(seconds, self.deadline - time.monotonic()))

  def log(self, name: str) -> str:
    return os.path.join(self.scratch, f"{name}.log")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description="rsjax's accelerator check (one JSON).")
  parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: checks the path")
  parser.add_argument("--out", default=os.path.join(HERE, "results", "accelerator_check.json"))
  parser.add_argument("--budget", type=float, default=450.0, help="seconds for all parts (450)")
  parser.add_argument("--parts", default="mfu,train,search,plan")
  args = parser.parse_args(argv)
  ctx = Context(args.dry_run, args.budget)
  if args.dry_run:
    os.environ["JAX_PLATFORMS"] = "cpu"
  import jax

  report = {"dry_run": args.dry_run, "jax": jax.__version__,
            "device": jax.devices()[0].device_kind, "device_count": jax.device_count(),
            "scratch": ctx.scratch, "parts": {}}
  started = time.perf_counter()
  for name in args.parts.split(","):
    t0 = time.perf_counter()
    print(f"accelerator_check: {name} ...", flush=True)
    parts = {"mfu": part_mfu, "train": part_train, "search": part_search,
             "plan": lambda c: part_plan(c, report["parts"].get("mfu", {}).get("result"))}
    try:
      if name not in parts:  # looked up outside the part, so a KeyError inside one is its own
        raise ValueError(f"unknown part {name!r}; the parts are {sorted(parts)}")
      entry = {"status": "ok", "result": parts[name](ctx)}
    except Exception as e:  # noqa: BLE001  a part's failure is recorded; the others still run
      entry = {"status": "failed", "error": f"{type(e).__name__}: {e}"[-3000:]}
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    report["parts"][name] = entry
    print(f"accelerator_check: {name} {entry['status']} in {entry['seconds']} s", flush=True)
  report["seconds"] = round(time.perf_counter() - started, 1)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1)
  print(json.dumps({k: {"status": v["status"], "seconds": v["seconds"]}
                    for k, v in report["parts"].items()}), flush=True)
  print(f"accelerator_check: wrote {args.out}", flush=True)
  return 0 if all(v["status"] == "ok" for v in report["parts"].values()) else 1


if __name__ == "__main__":
  sys.exit(main())
