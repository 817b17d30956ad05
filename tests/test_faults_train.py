"""Fault injection into training: SIGKILL (also mid checkpoint write), NaN/Inf loss or gradients,
corrupted or mismatched checkpoints, and a disk that is full or read-only when saving.

Each test checks that nothing is lost: a restarted run ends with exactly the parameters of an
uninterrupted one, and a refused or failed checkpoint leaves the earlier ones untouched.
"""

import errno
import hashlib
import itertools
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import SMOKE, cli_sets, tiny_config
from rsjax.train import guards as train_guards
from rsjax.train import loop as train_loop
from rsjax.train import step as train_step
from rsjax.checkpoint import _path_name
from rsjax.checkpoint import CheckpointMismatchError, CheckpointReadError, CheckpointWriteError

REPO = pathlib.Path(__file__).resolve().parents[1]
INJECT = str(REPO / "tests" / "fault_injection.py")
ONE_DEVICE = jax.devices()[:1]


# ---------------------------------------------------------------------------- helpers

def _cli_args(workdir, *overrides):
  return ["train", "--config", SMOKE, "--workdir", str(workdir),
          *cli_sets("eval.at_step0=False", *overrides)]


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = ""  # one CPU device: the subprocess runs are about the resume logic
  env["PYTHONPATH"] = str(REPO)
  return env


def _command(workdir, *overrides, fault=None):
  prefix = [INJECT, fault[0], str(fault[1]), "--"] if fault else ["-m", "rsjax.cli"]
  return [sys.executable, *prefix, *_cli_args(workdir, *overrides)]


def _state(workdir, step):
  """The saved train state of `step` as a flat {path: numpy array}."""
  tree = ocp.StandardCheckpointer().restore(pathlib.Path(workdir) / "checkpoints" / str(step) / "state")
  return {_path_name(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _assert_states_equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _finished_steps(workdir):
  ckpts = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


def _tree_digest(path):
  h = hashlib.sha256()
  for p in sorted(pathlib.Path(path).rglob("*")):
    if p.is_file():
      h.update(str(p.relative_to(path)).encode() + p.read_bytes())
  return h.hexdigest()


# ---------------------------------------------------------------------------- SIGKILL

def test_sigkill_at_several_points_resumes_to_the_uninterrupted_parameters(tmp_path):
  run = ("train.steps=12", "train.checkpoint_every=2", "train.keep_checkpoints=3")
  reference, faulty = tmp_path / "reference", tmp_path / "faulty"
  done = subprocess.run(_command(reference, *run), env=_env(), capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]

  # 1. Killed in the middle of writing the step-4 checkpoint: only step 2 is complete, the partial
  #    step-4 write is left in its temporary directory and never taken for a checkpoint.
  killed = subprocess.run(_command(faulty, *run, fault=("kill_in_save", 4)), env=_env(),
                          capture_output=True, text=True, timeout=300)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert _finished_steps(faulty) == [2]
  assert any(p.name.startswith("4.") for p in (faulty / "checkpoints").iterdir()), \
      "the kill should have left a partial step-4 write behind"

  # 2. Restarted with the same command, then killed again from outside once past step 7.
  proc = subprocess.Popen(_command(faulty, *run), env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  metrics = faulty / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    # Saves are asynchronous: past step 7 once the step-6 write has been renamed into place.
    if any(r["step"] >= 7 for r in rows) and 6 in _finished_steps(faulty):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL, out[-3000:]
  assert "resumed from checkpoint at step 2" in out
  latest = _finished_steps(faulty)[-1]
  assert 6 <= latest < 12

  # 3. The same command again finishes, and the result is bit-identical to the uninterrupted run.
  done = subprocess.run(_command(faulty, *run), env=_env(), capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"resumed from checkpoint at step {latest}" in done.stdout
  _assert_states_equal(_state(faulty, 12), _state(reference, 12))


# ---------------------------------------------------------------------------- NaN / Inf

def _poison(monkeypatch, bad_steps, where="loss"):
  """Makes the loss (where="loss") or only the gradients (where="grad") NaN on the given steps.

  A host callback counts executed train steps, so the fault lands on exactly those steps."""
  calls = itertools.count(1)

  def factor():
    return np.float32(np.nan if next(calls) in bad_steps else 1.0)

  def nan_factor():
    return jax.pure_callback(factor, jax.ShapeDtypeStruct((), jnp.float32))

  @jax.custom_vjp
  def poison_grad(x):
    return x

  poison_grad.defvjp(lambda x: (x, None), lambda _, g: (g * nan_factor(),))
  original = train_step.contrastive_loss

  def poisoned(*args, **kwargs):
    loss = original(*args, **kwargs)
    return loss * nan_factor() if where == "loss" else poison_grad(loss)

  monkeypatch.setattr(train_step, "contrastive_loss", poisoned)


def test_nonfinite_step_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch):
  # Gradient-only faults take the same check (the skip test below injects one).
  _poison(monkeypatch, {5}, "loss")
  config = tiny_config("train.steps=8", "train.checkpoint_every=2", "eval.at_step0=False")
  with pytest.raises(train_guards.NonFiniteLossError,
                     match=r"at step 5; stopping. The last good checkpoint is step 4"):
    train_loop.train(config, str(tmp_path), devices=ONE_DEVICE)
  assert _finished_steps(tmp_path) == [2, 4]
  assert all(np.isfinite(v).all() for v in _state(tmp_path, 4).values())


def test_nonfinite_step_is_skipped_and_counted_when_configured(tmp_path, monkeypatch):
  _poison(monkeypatch, {4}, "grad")
  config = tiny_config("train.steps=6", "train.checkpoint_every=1", "train.keep_checkpoints=10",
                       "train.nonfinite=skip", "eval.at_step0=False")
  train_loop.train(config, str(tmp_path), devices=ONE_DEVICE)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert {"step": 4, "skipped_steps": 1} in rows
  s3, s4, s5 = (_state(tmp_path, s) for s in (3, 4, 5))
  params = [k for k in s3 if k.startswith("params/")]
  assert params
  for k in params:  # step 4 changed nothing; step 5 trained again
    np.testing.assert_array_equal(s3[k], s4[k], err_msg=k)
  assert any(not np.array_equal(s4[k], s5[k]) for k in params)


def test_too_many_consecutive_skips_stop_the_run(tmp_path, monkeypatch):
  _poison(monkeypatch, {3, 4}, "loss")
  config = tiny_config("train.steps=6", "train.nonfinite=skip", "train.max_consecutive_skips=1",
                       "eval.at_step0=False")
  with pytest.raises(train_guards.NonFiniteLossError, match="2 non-finite steps in a row up to step 4"):
    train_loop.train(config, str(tmp_path), devices=ONE_DEVICE)


# ---------------------------------------------------------------------------- bad checkpoints

@pytest.fixture(scope="module")
def _pristine_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pristine")
  train_loop.train(tiny_config("train.steps=4", "eval.at_step0=False"), str(workdir),
                  devices=ONE_DEVICE)
  assert _finished_steps(workdir) == [2, 4]
  return workdir


@pytest.fixture
def two_checkpoints(_pristine_run, tmp_path):
  """A copy of a 4-step run with checkpoints at steps 2 and 4 (each test may damage its copy)."""
  workdir = tmp_path / "run"
  shutil.copytree(_pristine_run, workdir)
  return workdir


def _truncate_largest_file(directory):
  largest = max((p for p in pathlib.Path(directory).rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_size)
  largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
  return largest


def test_truncated_checkpoint_is_refused_unless_fallback_is_configured(two_checkpoints, capsys):
  workdir = two_checkpoints
  _truncate_largest_file(workdir / "checkpoints" / "4" / "state")
  before = _tree_digest(workdir / "checkpoints")
  with pytest.raises(CheckpointReadError,
                     match=r"(?s)checkpoint step 4 .*unreadable.*restore_fallback=True would fall back to step 2"):
    train_loop.train(tiny_config("train.steps=6", "eval.at_step0=False"), str(workdir),
                    devices=ONE_DEVICE)
  assert _tree_digest(workdir / "checkpoints") == before  # refusing touched nothing

  train_loop.train(tiny_config("train.steps=6", "eval.at_step0=False", "train.restore_fallback=True"),
                  str(workdir), devices=ONE_DEVICE)
  out = capsys.readouterr().out
  assert "refusing checkpoint step 4" in out and "falling back to step 2" in out
  assert "resumed from checkpoint at step 2" in out
  assert _finished_steps(workdir)[-1] == 6
  refused = list((workdir / "refused_checkpoints").iterdir())  # set aside, not deleted
  assert len(refused) == 1 and refused[0].name.startswith("4-")


def test_checkpoint_of_another_model_shape_names_the_parameters(two_checkpoints):
  with pytest.raises(CheckpointMismatchError) as err:
    train_loop.train(tiny_config("train.steps=6", "model.embed_dim=8", "eval.at_step0=False"),
                    str(two_checkpoints), devices=ONE_DEVICE)
  message = str(err.value)
  assert "checkpoint step 4" in message and "does not fit this model" in message
  assert "checkpoint (32, 16) vs model (32, 8)" in message  # a projection kernel, by its path
  assert ".params/" not in message and "params/" in message


def test_checkpoint_of_another_model_config_names_the_key(two_checkpoints):
  # A causal text tower has the same parameter shapes: only the saved config tells them apart.
  with pytest.raises(CheckpointMismatchError,
                     match=r"model.text.causal: checkpoint False vs config True"):
    train_loop.train(tiny_config("train.steps=6", "model.text.causal=True", "eval.at_step0=False"),
                    str(two_checkpoints), devices=ONE_DEVICE)


# ---------------------------------------------------------------------------- failed writes

def test_failed_checkpoint_write_is_reported_and_the_previous_one_survives(tmp_path, monkeypatch):
  """Disk full in the middle of writing step 4's checkpoint (the OS error is raised where the
  write would fail). The read-only case goes through the CLI test below."""
  code = errno.ENOSPC
  original = grain.checkpoint.CheckpointHandler.save

  def failing_save(self, directory, item=None, args=None):
    if directory.parent.name.startswith("4."):
      raise OSError(code, os.strerror(code), str(directory))
    return original(self, directory, item, args)

  monkeypatch.setattr(grain.checkpoint.CheckpointHandler, "save", failing_save)
  config = tiny_config("train.steps=6", "eval.at_step0=False")
  with pytest.raises(CheckpointWriteError, match=(
      rf"(?s)could not write the checkpoint of step 4 .*{os.strerror(code)}.*"
      r"the previous checkpoint \(step 2\) is intact")):
    train_loop.train(config, str(tmp_path), devices=ONE_DEVICE)
  assert _finished_steps(tmp_path) == [2]

  monkeypatch.setattr(grain.checkpoint.CheckpointHandler, "save", original)  # space freed
  train_loop.train(config, str(tmp_path), devices=ONE_DEVICE)
  assert _finished_steps(tmp_path)[-1] == 6


def test_cli_reports_a_failed_write_in_one_line(tmp_path):
  """A read-only file system (EROFS raised where the write fails: CI runs as root, where
  permission bits do not stop writes)."""
  done = subprocess.run(_command(tmp_path, "train.steps=4", fault=("read_only", 4)), env=_env(),
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 1, done.stderr[-3000:]
  errors = [line for line in done.stderr.splitlines() if line.startswith("rsjax train: error:")]
  assert len(errors) == 1 and "could not write the checkpoint of step 4" in errors[0]
  assert "Read-only file system" in errors[0]
  assert "the previous checkpoint (step 2) is intact" in done.stderr
