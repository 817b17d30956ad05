"""Shared output for benchmark scripts: one markdown table on stdout, the same rows as JSON.

Every script under benchmarks/ ends with `report(rows, __file__)`, which prints the table and
writes `benchmarks/results/<script name>.json`.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import platform
import subprocess
import sys
import time
from typing import Sequence

# RSJAX_BENCH_RESULTS: another folder, e.g. for benchmarks/accelerator_check.sh's parts.
RESULTS_DIR = os.environ.get("RSJAX_BENCH_RESULTS") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results")


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Held by every `rsjax` run of a benchmark, so that two heavy runs never share the CPU.
HEAVY_LOCK = "/tmp/rsjax_heavy.lock"


def rsjax(*args: str) -> None:
  """Runs the venv's `rsjax` CLI from the repository root under HEAVY_LOCK, printing the command
  and its wall time; a failure raises."""
  cmd = [os.path.join(os.path.dirname(sys.executable), "rsjax"), *args]
  with open(HEAVY_LOCK, "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    print("$ " + " ".join(cmd), flush=True)
    started = time.perf_counter()
    # This checkout's rsjax, whichever checkout the venv's editable install points at.
    path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": path})
    print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)


def train_and_evaluate(args: Sequence[str], workdir: str, splits: Sequence[str]
                       ) -> tuple[dict, float]:
  """`rsjax train ARGS` into workdir (unless done) and `rsjax eval ARGS --splits ...` (unless
  every split is in its eval_full.json): (eval_full.json's contents, the training's wall s)."""
  import json

  wall_path = os.path.join(workdir, "train_wall_s.txt")
  if not os.path.exists(wall_path):
    started = time.perf_counter()
    rsjax("train", *args, "--workdir", workdir)
    with open(wall_path, "w") as f:
      f.write(f"{time.perf_counter() - started:.1f}\n")
  full_path = os.path.join(workdir, "eval_full.json")
  if not os.path.exists(full_path) or set(splits) - set(json.load(open(full_path))["splits"]):
    rsjax("eval", *args, "--workdir", workdir, "--splits", ",".join(splits))
  with open(full_path) as f, open(wall_path) as w:
    return json.load(f), float(w.read())


def markdown_table(rows: Sequence[dict]) -> str:
  if not rows:
    return "(no rows)"
  columns = list(rows[0])
  for row in rows[1:]:
    columns += [c for c in row if c not in columns]

  def cell(v):
    if isinstance(v, float):
      return f"{v:.4g}"
    return "" if v is None else str(v)

  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def report(rows: Sequence[dict], script: str, meta: dict | None = None) -> str:
  """Prints the table and writes results/<script>.json; returns the JSON path."""
  print(markdown_table(rows), flush=True)
  name = os.path.splitext(os.path.basename(script))[0]
  os.makedirs(RESULTS_DIR, exist_ok=True)
  path = os.path.join(RESULTS_DIR, f"{name}.json")
  payload = {"script": name, "date": datetime.datetime.now(datetime.UTC).isoformat(),
             "machine": platform.platform(), "cpu_count": os.cpu_count(), **(meta or {}),
             "rows": list(rows)}
  with open(path, "w") as f:
    json.dump(payload, f, indent=2)
  return path
