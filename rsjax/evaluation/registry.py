"""Evaluators found by name (big_vision style), and the context they share for one split.

An evaluator is a module of this package with
- `NAME`: the name a config lists in `eval.evaluators` (or `rsjax eval` runs),
- `unavailable(ctx) -> str | None`: why it cannot run on this split / model (None: it can),
- `evaluate(ctx) -> dict`: its metrics,
- `summary(result) -> str`: one log line (units included).
New evaluations (robustness, change retrieval, token re-ranking) plug in by adding a module and
one entry to EVALUATORS; the trainer and `rsjax eval` only call `evaluate_split` / `evaluate_run`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Sequence

import numpy as np
from jax.sharding import Mesh

from rsjax.console import log
from rsjax.data.types import EvalSplit, RetrievalData
from rsjax.evaluation import change, gallery, hashing, labels, recalls
from rsjax.evaluation.encode import SplitEncodings
from rsjax.errors import ConfigError

EVALUATORS = {m.NAME: m for m in (recalls, hashing, labels, change, gallery)}


@dataclasses.dataclass
class EvalContext:
  """What an evaluator may look at: the model and its parameters, one split, the run's config."""
  model: object
  params: object
  split: EvalSplit
  split_name: str
  mesh: Mesh
  config: object
  class_names: Sequence[str] = ()
  tokenizer: object = None

  @property
  def batch_size(self) -> int:
    return self.config.eval.batch_size

  @functools.cached_property
  def encodings(self) -> SplitEncodings:
    return SplitEncodings(self.model, self.params, self.split, self.mesh, self.batch_size)

  def with_images(self, images: np.ndarray) -> "EvalContext":
    """This context with the split's images replaced ([M, H, W, 3], e.g. corrupted copies): the
    captions' embeddings and codes and the compiled encoders are shared, only images re-encode."""
    other = dataclasses.replace(self, split=dataclasses.replace(self.split, images=images))
    other.encodings = self.encodings.with_images(images)
    return other

  @functools.cached_property
  def image_labels(self) -> np.ndarray | None:
    """Per-image class ids [M] when the split's captions carry labels['scene'], else None."""
    return labels.image_labels(self.split)


def context(model, params, data: RetrievalData, split_name: str, config, mesh) -> EvalContext:
  return EvalContext(model, params, data.eval_splits[split_name], split_name, mesh, config,
                     data.class_names or (), data.tokenizer)


def check_names(names: Sequence[str], key: str = "eval.evaluators") -> None:
  """Refuses an unknown evaluator name, naming the config key (before anything compiles)."""
  for name in names:
    if name not in EVALUATORS:
      close = difflib.get_close_matches(name, list(EVALUATORS), n=1)
      hint = f" (did you mean '{close[0]}'?)" if close else ""
      raise ConfigError(f"config key '{key}': unknown evaluator '{name}'{hint}; "
                       f"known: {', '.join(EVALUATORS)}")


def config_evaluators(config) -> tuple[str, ...]:
  """eval.evaluators, checked: known names, "retrieval" among them (eval.json's recalls), not the
  report's gallery (images, not metrics; `rsjax eval` draws it on its first split)."""
  if "label_metrics" in config.eval:
    raise ConfigError("config key 'eval.label_metrics' was replaced by eval.evaluators: use "
                     "evaluators=(\"retrieval\", \"labels\")")
  names = tuple(config.eval.get("evaluators", (recalls.NAME,)))
  check_names(names)
  if recalls.NAME not in names:
    raise ConfigError(f"config key 'eval.evaluators': {names} must include '{recalls.NAME}' "
                     "(the recalls of eval.json)")
  if gallery.NAME in names:
    raise ConfigError(f"config key 'eval.evaluators': '{gallery.NAME}' is not a metric; "
                     "`rsjax eval` writes the gallery of its first split for the report")
  return names


def evaluate_split(ctx: EvalContext, names: Sequence[str], required: bool = True) -> dict:
  """{name: result} of each named evaluator on ctx's split. An evaluator that cannot run raises
  (naming eval.evaluators) when `required`, and is left out otherwise."""
  check_names(names)
  out = {}
  for name in names:
    module = EVALUATORS[name]
    reason = module.unavailable(ctx)
    if reason:
      if required:
        raise ConfigError(f"config key 'eval.evaluators': '{name}' cannot run: {reason}")
      continue
    out[name] = module.evaluate(ctx)
  return out


def evaluate_run(model, params, data: RetrievalData, config, mesh, split_name: str | None = None,
                 names: Sequence[str] | None = None) -> dict:
  """The trainer's evaluation of one split (default eval.split) with eval.evaluators.

  Returns the `retrieval` metrics at the top level (i2t_r1 ... mR, as eval.json has them) and every
  other evaluator's result under its name; logs one summary line per extra evaluator."""
  split_name = split_name or config.eval.split
  names = tuple(names) if names is not None else config_evaluators(config)
  ctx = context(model, params, data, split_name, config, mesh)
  results = evaluate_split(ctx, names)
  out = dict(results.pop(recalls.NAME, {}))
  for name, result in results.items():
    out[name] = result
    log(f"{split_name} split, {EVALUATORS[name].summary(result)}")
  return out
