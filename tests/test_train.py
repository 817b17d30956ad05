"""End-to-end trainer behaviour: resume equals an uninterrupted run; eval.json layout."""

import json
import os

import jax
import numpy as np
import pytest

from helpers import final_state as _final_params, tiny_config
from rsjax.evaluation import workdir as eval_workdir
from rsjax.train import loop as train_loop
from rsjax.checkpoint import Checkpointer


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [(r["step"], r["loss"]) for r in map(json.loads, f)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  config = tiny_config()
  results = train_loop.train(config, workdir)
  return config, workdir, results


def test_resumed_run_equals_uninterrupted(uninterrupted, tmp_path):
  config, straight_dir, _ = uninterrupted
  resumed_dir = str(tmp_path / "resumed")
  with pytest.raises(RuntimeError, match="simulated crash after step 3"):
    train_loop.train(config, resumed_dir, crash_after_step=3)  # last checkpoint: step 2
  ckpt = Checkpointer(os.path.join(resumed_dir, "checkpoints"))
  assert ckpt.latest_step() == 2
  ckpt.close()
  train_loop.train(config, resumed_dir)

  step_a, params_a = _final_params(config, straight_dir)
  step_b, params_b = _final_params(config, resumed_dir)
  assert step_a == step_b == config.train.steps
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
    np.testing.assert_array_equal(a, b)  # bit-exact: same data order, same updates
  # The resumed run's log has no duplicate rows and matches the uninterrupted one.
  assert _losses(resumed_dir) == _losses(straight_dir)


def test_eval_json_has_recalls_and_step0(uninterrupted):
  _, workdir, results = uninterrupted
  with open(os.path.join(workdir, "eval.json")) as f:
    saved = json.load(f)
  keys = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR"]
  for key in keys:
    assert 0.0 <= saved[key] <= 100.0
    assert 0.0 <= saved["step0"][key] <= 100.0
  assert saved["mR"] == pytest.approx(np.mean([saved[k] for k in keys[:-1]]))
  assert saved == json.loads(json.dumps(results))


def test_eval_command_reproduces_final_metrics(uninterrupted):
  config, workdir, results = uninterrupted
  again = eval_workdir.evaluate_workdir(config, workdir)
  for key in ("i2t_r1", "t2i_r10", "mR"):
    assert again[key] == pytest.approx(results[key], abs=1e-6)
