"""A run's latest checkpoint evaluated on disk: the step-N metrics of eval.split, as a JSON file."""

from __future__ import annotations

import os

import jax
import ml_collections

from rsjax import atomic, parallel, runs
from rsjax.console import log
from rsjax.data.datasets import load_retrieval_data
from rsjax.evaluation.recalls import format_table
from rsjax.evaluation.registry import evaluate_run


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
  """Evaluates the latest checkpoint in `workdir` on config.eval.split with eval.evaluators;
  writes eval_<split>_step<N>.json there (process 0) and returns the metrics."""
  parallel.initialize_distributed()
  mesh = parallel.make_mesh(config, devices)
  model, params, step = runs.load_model(config, workdir, mesh, check_config=True)
  data = load_retrieval_data(config, workdir)
  results = evaluate_run(model, params, data, config, mesh)
  results["step"] = step
  if jax.process_index() == 0:
    atomic.write_json(os.path.join(workdir, f"eval_{config.eval.split}_step{step}.json"), results)
  log(f"{config.eval.split} split retrieval at step {step} (percent):\n"
      + format_table({f"step {step}": results}))
  return results
