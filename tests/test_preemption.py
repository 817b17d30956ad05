"""SIGTERM (the pre-emption notice of cloud TPUs and SLURM): checkpoint at the current step, exit 0,
and a restart continues from that step."""

import json
import os
import signal
import subprocess
import sys
import time

from helpers import SMOKE

TINY = ["data.image_size=32", "data.num_train=64", "data.num_val=8", "data.num_test=16",
        "model.embed_dim=16", "model.image.width=32", "model.image.depth=1", "model.image.heads=2",
        "model.image.patch_size=8", "model.text.width=32", "model.text.depth=1",
        "model.text.heads=2", "train.batch_size=16", "train.warmup_steps=2", "train.log_every=1",
        "eval.batch_size=16", "eval.at_step0=False"]


def _command(workdir, steps):
  sets = [x for item in TINY + [f"train.steps={steps}", "train.checkpoint_every=0"]
          for x in ("--set", item)]
  return [sys.executable, "-m", "rsjax.cli", "train", "--config", SMOKE, "--workdir", workdir, *sets]


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = ""  # one CPU device is enough here
  return env


def test_sigterm_checkpoints_and_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  metrics = os.path.join(workdir, "metrics.jsonl")
  proc = subprocess.Popen(_command(workdir, 100_000), env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and not (os.path.exists(metrics) and os.path.getsize(metrics)):
    time.sleep(0.5)
  assert proc.poll() is None, proc.stdout.read()
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert "SIGTERM received: checkpoint written at step" in out
  step = int(out.split("checkpoint written at step")[1].split(";")[0])
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(step)))

  # The same command with a finite length resumes from that step and finishes.
  done = subprocess.run(_command(workdir, step + 3), env=_env(), capture_output=True, text=True,
                        timeout=240)
  assert done.returncode == 0, done.stdout + done.stderr
  assert f"resumed from checkpoint at step {step}" in done.stdout
  with open(os.path.join(workdir, "eval.json")) as f:
    assert json.load(f)["step"] == step + 3
