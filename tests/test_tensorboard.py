"""TensorBoard event files: read back with tensorboard's own reader, they equal metrics.jsonl,
also after a resume; the final evaluation and `rsjax eval` add scalars and text tables."""

import json
import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import cli_sets, tiny_config
from rsjax import cli
from rsjax.tensorboard import SUBDIR, flat_scalars
from rsjax.train import loop as train_loop


def events(workdir):
  acc = EventAccumulator(os.path.join(workdir, SUBDIR), size_guidance={"scalars": 0, "tensors": 0})
  acc.Reload()
  return acc


def jsonl_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_events_equal_metrics_jsonl_after_a_crash_and_resume(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  overrides = ("train.steps=6", "train.checkpoint_every=2", "eval.at_step0=False")
  with pytest.raises(RuntimeError, match="simulated crash"):
    train_loop.train(tiny_config(*overrides), workdir, crash_after_step=5)  # last checkpoint: 4
  assert [r["step"] for r in jsonl_rows(workdir)] == [1, 2, 3, 4, 5]
  train_loop.train(tiny_config(*overrides), workdir)  # resumes at 4: step 5 is written again
  rows = jsonl_rows(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  acc = events(workdir)
  for key in ("loss", "lr", "images_per_s", "grad_norm", "contrastive_loss"):
    got = [(e.step, e.value) for e in acc.Scalars(key)]
    # each step once (the interrupted run's step 5 purged), with the value metrics.jsonl has
    assert [s for s, _ in got] == [1, 2, 3, 4, 5, 6], key
    assert [v for _, v in got] == pytest.approx([r[key] for r in rows], rel=1e-6), key
  with open(os.path.join(workdir, "eval.json")) as f:
    final = json.load(f)
  assert acc.Scalars("eval/test/mR")[-1].value == pytest.approx(final["mR"], rel=1e-6)
  assert acc.Scalars("eval/test/mR")[-1].step == 6

  # `rsjax eval` adds its results at the checkpoint's step, and its tables as text.
  assert cli.main(["eval", "--config", "configs/smoke.py", "--workdir", workdir,
                   *cli_sets(*overrides), "--splits", "test"]) == 0
  with open(os.path.join(workdir, "eval_full.json")) as f:
    full = json.load(f)
  acc = events(workdir)
  assert acc.Scalars("eval/splits/test/retrieval/t2i_r10")[-1].value == pytest.approx(
      full["splits"]["test"]["retrieval"]["t2i_r10"], rel=1e-6)
  text = acc.Tensors("eval/recalls/text_summary")[-1]
  assert text.step == 6 and b"| test |" in text.tensor_proto.string_val[0]


def test_flat_scalars_keeps_finite_numbers_by_path():
  tree = {"a": {"b": 1, "c": [1.0, 2.0], "d": "x", "e": float("nan")}, "f": 2.5, "g": True}
  assert flat_scalars(tree, "eval/") == {"eval/a/b": 1.0, "eval/f": 2.5}
