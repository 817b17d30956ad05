"""benchmarks/accelerator_check.sh --dry-run: every part of the accelerator check runs on the CPU
at toy sizes, so the one command kept for GPU sessions cannot rot in between."""

import json
import os
import pathlib
import subprocess

from conftest import REPO


def test_the_dry_run_completes_every_part_into_one_json(tmp_path):
  out = tmp_path / "accelerator_check.json"
  results = REPO / "benchmarks" / "results"
  before = {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")}
  env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": str(REPO)}
  done = subprocess.run([str(REPO / "benchmarks" / "accelerator_check.sh"), "--dry-run",
                         "--out", str(out)], env=env, capture_output=True, text=True,
                        timeout=900)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["dry_run"] is True and report["device"] == "cpu"
  parts = report["parts"]
  assert {k: v["status"] for k, v in parts.items()} == dict.fromkeys(
      ("mfu", "train", "search", "plan"), "ok")
  mfu = parts["mfu"]["result"]
  assert mfu["images_per_s"] > 0 and mfu["TFLOP_per_step"] > 0 and mfu["MFU_vs_matmul"] > 0
  train = parts["train"]["result"]
  assert train["resumed_at_step"] == 4 and train["steps_logged"] == 8 and train["test_mR"] > 0
  assert parts["search"]["result"]["rows"]
  plan = parts["plan"]["result"]["plan"]
  assert plan["total_bytes"] > 0 and plan["fits"]
  # The parts' own result files went to the scratch folder, not over the committed ones.
  assert {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")} == before
