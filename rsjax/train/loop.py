"""The trainer, read top to bottom: mesh -> input -> model -> shard -> update -> checkpoint -> eval.

Parameters and optimizer state are laid out by the logical-axis rules in `rsjax.parallel`; the
batch is split over the mesh's data-parallel axes; the update is `rsjax.train.step`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

import flax.linen as nn
import jax
import ml_collections

from rsjax import atomic, optim, parallel, runs, state as state_lib, tensorboard, trainable
from rsjax.checkpoint import Checkpointer
from rsjax.console import log
from rsjax.data import corruptions, pipeline
from rsjax.data.datasets import load_retrieval_data
from rsjax.data.types import RetrievalData
from rsjax.evaluation.recalls import format_table, summary as recall_summary
from rsjax.evaluation.registry import config_evaluators, evaluate_run
from rsjax.metric_writer import MetricWriter
from rsjax.train.guards import NonFiniteGuard, PeerLostError, PreemptionFlag, collective_work
from rsjax.train.step import compile_train_step, grad_accum_steps, label_key, make_train_step
from rsjax.train.watchdog import Watchdog
from rsjax.errors import ConfigError


def open_input(config: ml_collections.ConfigDict, workdir: str) -> tuple[RetrievalData, object]:
  """The data set and this process's iterator over global-batch slices of the train split."""
  t = config.train
  data = load_retrieval_data(config, workdir)
  if data.tokenizer.vocab_size > config.model.text.vocab_size:
    raise ConfigError(f"config key 'model.text.vocab_size' is {config.model.text.vocab_size} but "
                      f"the tokenizer has {data.tokenizer.vocab_size} pieces")
  # Refused before the model is built, not at the first evaluation.
  needed = {"eval.split": config.eval.split} | ({"eval.every": "val"} if config.eval.every else {})
  for key, split in needed.items():
    if split not in data.eval_splits:
      use = ("add one, or --set eval.split=NAME" if key == "eval.split" else
             "the periodic evaluation reads 'val': add one, or --set eval.every=0")
      raise ConfigError(f"config key '{key}': the data set has no {split!r} split to evaluate on "
                        f"(it has {', '.join(sorted(data.eval_splits)) or 'none'} besides the "
                        f"train split); {use}")
  label_source = label_key(config)
  if label_source and data.train_labels is None:
    raise ConfigError(f"config key '{label_source}' is 'label' but the train split has no class "
                     "labels (in-memory label-only sets have them: data.name='annotated' with "
                     "data.label_prompt and stream=False)")
  if hasattr(data, "train_iterator"):  # a streamed set (data.name="tfds"): grain decodes + augments
    return data, data.train_iterator(t.batch_size, t.seed, jax.process_index(),
                                     jax.process_count())
  return data, pipeline.train_iterator(
      data.train_images, data.train_tokens, t.batch_size, t.seed,
      jax.process_index(), jax.process_count(),
      labels=data.train_labels if label_source else None, dihedral=data.train_dihedral,
      corruptions=corruptions.from_config(config.data), extras=data.train_extras)


class Start:
  """Where a run starts: the step, the train state, its shardings, and for a run with frozen
  parameters those parameters (passed to every step) and their reference (saved with every
  checkpoint)."""

  def __init__(self, step: int, state, shardings, frozen: dict, base: dict | None):
    self.step, self.state, self.shardings, self.frozen, self.base = (step, state, shardings,
                                                                    frozen, base)


def restore_or_init(config, model, tx, mesh, ckpt: Checkpointer, train_iter) -> Start:
  """The latest checkpoint (with the iterator restored in place), else the weights of
  init.checkpoint (a converted folder or a run), else a fresh initialisation. With train.frozen the
  frozen parameters are read from init.checkpoint in every case, and a checkpoint trained on other
  ones is refused."""
  t = config.train
  abstract, shardings = state_lib.state_layout(model, tx, config, mesh)
  start, state = ckpt.restore_latest(abstract, train_iter, config,
                                     fallback=t.get("restore_fallback", False), log=log)
  if start is not None:
    log(f"resumed from checkpoint at step {start}")
  if trainable.frozen_patterns(t):
    trained, frozen, base = runs.frozen_base(config, model, mesh, log)
    if start is not None:
      runs.check_base(ckpt.saved_base(start), base, f"checkpoint step {start} in {ckpt.directory}")
    else:
      state = state_lib.state_from_params(trained, tx, shardings)
    return Start(int(start or 0), state, shardings, frozen, base)
  if start is None:
    if config.get("init") and config.init.checkpoint:
      params = runs.starting_params(config, model, mesh, log)
      state = state_lib.state_from_params(params, tx, shardings)
    else:
      state, shardings = state_lib.init_state(model, tx, config, mesh, jax.random.key(t.seed))
  return Start(int(start or 0), state, shardings, {}, None)


def log_trainable(state, frozen: dict) -> None:
  """The parameter count, and with frozen parameters the trained share and its optimizer state."""
  trained = sum(x.size for x in jax.tree.leaves(state.params))
  fixed = sum(x.size for x in jax.tree.leaves(frozen))
  if not fixed:
    log(f"model: {trained / 1e6:.2f}M parameters")
    return
  opt_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.opt_state))
  log(f"model: {(trained + fixed) / 1e6:.2f}M parameters, {trained / 1e6:.3f}M trained "
      f"({100 * trained / (trained + fixed):.2f}%), {fixed / 1e6:.2f}M frozen; optimizer state "
      f"{opt_bytes / 2**20:.1f} MiB")


class Throughput:
  """Images/s between log lines, leaving out compilation (the first step) and evaluations."""

  def __init__(self, start: int, batch_size: int):
    self.batch_size = batch_size
    self.tick, self.tick_step = time.perf_counter(), start

  def rate(self, step: int) -> float:
    now = time.perf_counter()
    rate = (step - self.tick_step) * self.batch_size / max(now - self.tick, 1e-9)
    self.tick, self.tick_step = now, step
    return rate

  def restart(self, step: int) -> None:
    self.tick, self.tick_step = time.perf_counter(), step

  def pause(self, seconds: float) -> None:
    self.tick += seconds


def train(config: ml_collections.ConfigDict, workdir: str, devices=None,
          crash_after_step: int | None = None) -> dict:
  """Trains (resuming from `workdir` when it holds a checkpoint), evaluates, returns eval metrics.

  `crash_after_step` raises right after that step (and its checkpoint, if one is due): tests use it
  to stand for a run killed mid-way.
  """
  t = config.train
  os.makedirs(workdir, exist_ok=True)
  config_evaluators(config)  # a wrong eval.evaluators stops the run before anything compiles
  parallel.initialize_distributed()  # multi-host runs: before anything touches the devices
  mesh = parallel.make_mesh(config, devices)
  parallel.check_batch(t.batch_size, mesh, grad_accum_steps(config))
  log(f"mesh {dict(mesh.shape)} over {mesh.devices.size} {mesh.devices.flat[0].platform} device(s)")

  runs.adopt_tokenizer(config, workdir, log)  # before the data layer picks a tokenizer
  data, train_iter = open_input(config, workdir)

  model, tx = state_lib.create_model(config), optim.make_optimizer(t)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=t.keep_checkpoints,
                      async_save=t.get("async_checkpoints", True))
  begin = restore_or_init(config, model, tx, mesh, ckpt, train_iter)
  start, state, shardings, frozen = begin.step, begin.state, begin.shardings, begin.frozen
  log_trainable(state, frozen)
  teacher, teacher_params = runs.load_teacher(config, mesh, workdir, log)
  constants = {"frozen": frozen} if frozen else {}
  if teacher is not None:
    constants["teacher"] = teacher_params
  params_of = lambda s: trainable.join(s.params, frozen)  # every parameter, for evaluation

  step0_path = os.path.join(workdir, "step0_eval.json")
  if config.eval.at_step0 and not os.path.exists(step0_path):
    if start != 0:
      log("no step-0 evaluation recorded before this checkpoint; skipping it")
    else:
      step0 = evaluate_run(model, params_of(state), data, config, mesh)
      write_json(step0_path, step0)
      log(f"step 0: {config.eval.split} mR {step0['mR']:.2f}")

  constants_shardings = jax.tree.map(lambda x: x.sharding, constants) if constants else None
  step_fn = compile_train_step(make_train_step(model, tx, config, mesh, teacher), shardings, mesh,
                               constants_shardings)
  step_args = (constants,) if constants else ()
  schedule = optim.learning_rate_schedule(t)
  writer = MetricWriter(os.path.join(workdir, "metrics.jsonl"), resume_step=start)
  guard = NonFiniteGuard(t, ckpt, writer)
  throughput = Throughput(start, t.batch_size)
  # Multi-process runs only: one process alone has no peer to wait for.
  watchdog = Watchdog(t.get("step_timeout_s", 0) if jax.process_count() > 1 else 0,
                      ckpt.known_complete_step,
                      f"process {jax.process_index()} of {jax.process_count()}")
  try:
    with PreemptionFlag() as preempt, jax.set_mesh(mesh), \
        nn.logical_axis_rules(parallel.rules_for(config)):
      for step in range(start + 1, t.steps + 1):
        # The first step compiles (minutes on a large model): JAX's own heartbeats watch it.
        with collective_work(watchdog, f"step {step}", step, ckpt,
                             timeout_s=0 if step == start + 1 else None):
          batch = parallel.shard_batch(next(train_iter), mesh)
          state, m = step_fn(state, batch, *step_args)
          loss = float(jax.block_until_ready(m["loss"]))  # blocking avoids CPU collective stalls
          stop = preempt.agreed()  # every process stops at the same step
        guard.check(step, loss, float(m["grad_norm"]))

        if step % t.log_every == 0 or step == t.steps:
          rate = throughput.rate(step)
          row = {"step": step, "loss": loss, "lr": float(schedule(step - 1)),
                 **{k: float(v) for k, v in m.items() if k != "loss"}, "images_per_s": rate}
          writer.write(row)
          eta = (t.steps - step) * t.batch_size / max(rate, 1e-9)
          log(f"step {step:>6}/{t.steps} | loss {loss:.4f} | lr {row['lr']:.2e} | "
              f"{rate:7.1f} img/s | eta {eta / 60:.1f} min")
        if step == start + 1:  # leave compilation out of the images/s figure
          throughput.restart(step)

        if config.eval.every and step % config.eval.every == 0 and step != t.steps:
          eval_start = time.perf_counter()
          periodic = evaluate_run(model, params_of(state), data, config, mesh, split_name="val",
                                  names=("retrieval",))
          writer.write({"step": step, **{f"val_{k}": v for k, v in periodic.items()}})
          log(f"step {step:>6}/{t.steps} | val {recall_summary(periodic)}")
          throughput.pause(time.perf_counter() - eval_start)

        due = t.checkpoint_every and step % t.checkpoint_every == 0
        if due or step == t.steps or stop:
          # The save's all-gathers and barriers need every process, as the step's collectives do.
          with collective_work(watchdog, f"the checkpoint of step {step}", step, ckpt):
            ckpt.save(step, state, train_iter, config, base=begin.base)
          writer.flush()  # the event files hold what the checkpoint holds
        if stop:
          ckpt.close()
          who = "SIGTERM received" if preempt.requested else "another process received SIGTERM"
          log(f"{who}: checkpoint written at step {step}; exiting")
          return {}
        if crash_after_step == step:
          raise RuntimeError(f"simulated crash after step {step}")
  except BaseException as e:
    if not isinstance(e, PeerLostError):  # an asynchronous save in flight is finished, not lost
      with contextlib.suppress(Exception):
        ckpt.close()
    raise
  finally:
    watchdog.close()
    writer.close()
  ckpt.close()

  results = evaluate_run(model, params_of(state), data, config, mesh)
  if os.path.exists(step0_path):
    with open(step0_path) as f:
      results["step0"] = json.load(f)
  results["step"] = t.steps
  write_json(os.path.join(workdir, "eval.json"), results)
  rows = {"step 0 (untrained)": results["step0"]} if "step0" in results else {}
  rows[f"step {t.steps}"] = results
  table = format_table(rows)
  log(f"{config.eval.split} split retrieval (percent):\n" + table)
  tensorboard.write_eval(workdir, t.steps, {config.eval.split: {
      k: v for k, v in results.items() if k != "step0"}}, {"eval/recalls": table})
  return results


def write_json(path: str, obj: dict) -> None:
  """Writes `obj` atomically from process 0 only."""
  if jax.process_index() == 0:
    atomic.write_json(path, obj)
