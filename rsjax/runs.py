"""A run on disk: its trained model read back from its checkpoints, and the starting parameters of
a new run (`init.checkpoint`: a `rsjax convert` folder or any rsjax run's workdir).

A run that freezes parameters (train.frozen) checkpoints only the trained ones. Its frozen part is
read again from `init.checkpoint` whenever the run is resumed or loaded (`load_model`), and each
checkpoint records where it came from and a digest of its values (`base_reference`), so a changed
base is refused instead of silently giving another model.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import flax
import jax
import ml_collections
import numpy as np

from rsjax import optim, parallel, state, trainable
from rsjax.checkpoint import Checkpointer, CheckpointMismatchError
from rsjax.console import log as console_log
from rsjax.errors import ConfigError

TOKENIZER_FILE = "tokenizer.model"


def checkpoint_dir(path: str) -> str:
  """A workdir (with checkpoints/) or a checkpoints folder -> the checkpoints folder."""
  inner = os.path.join(path, "checkpoints")
  return inner if os.path.isdir(inner) else path


def is_run_dir(path: str) -> bool:
  """A run's workdir or its checkpoints folder, holding at least one finished step."""
  folder = checkpoint_dir(path)
  return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


def run_workdir(path: str) -> str:
  base = os.path.abspath(path)
  return base if os.path.isdir(os.path.join(base, "checkpoints")) else os.path.dirname(base)


def tokenizer_path(checkpoint: str, given: str | None = None) -> str:
  """The run's SentencePiece model: `given`, else tokenizer.model in the workdir."""
  if not os.path.isdir(checkpoint):
    raise FileNotFoundError(f"--checkpoint {checkpoint}: no such run folder (the --workdir of "
                            "an `rsjax train` run, or its checkpoints folder)")
  path = given or os.path.join(run_workdir(checkpoint), TOKENIZER_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"tokenizer {path} not found; pass --tokenizer PATH (the "
                            "tokenizer.model the model was trained with)")
  return path


def run_config(path: str) -> ml_collections.ConfigDict:
  """The config the newest checkpoint of run `path` was written with."""
  ckpt = Checkpointer(checkpoint_dir(path))
  try:
    return ml_collections.ConfigDict(ckpt.saved_config(ckpt.latest_step()))
  finally:
    ckpt.close()


def _init_source(config) -> str:
  source = config.init.checkpoint if config.get("init") else ""
  if source and not os.path.exists(source):
    raise ConfigError(f"config key 'init.checkpoint': {source} does not exist (a `rsjax convert` "
                      "folder or an rsjax run's workdir)")
  return source


def adopt_tokenizer(config, workdir: str, log=console_log) -> None:
  """A run started from another rsjax run tokenizes as that run did: its tokenizer.model is copied
  into `workdir` (where the data layer looks first) unless data.tokenizer_path names one."""
  source = _init_source(config)
  if not source or not is_run_dir(source) or config.data.get("tokenizer_path", ""):
    return
  theirs = os.path.join(run_workdir(source), TOKENIZER_FILE)
  ours = os.path.join(workdir, TOKENIZER_FILE)
  if os.path.isfile(theirs) and not os.path.exists(ours):
    shutil.copyfile(theirs, ours)
    log(f"init: tokenizer {theirs} (the one the init.checkpoint run was trained with)")


def _flat_host(params) -> dict[str, np.ndarray]:
  return {k: parallel.to_host(v) if isinstance(v, jax.Array) else np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}


def starting_params(config, model, mesh, log=console_log):
  """Every parameter a new run starts from, in its sharded layout: init.checkpoint's weights where
  it has them (modules it lacks, e.g. LoRA, keep their fresh values), else a fresh initialisation
  from train.seed."""
  from rsjax.convert import init_params as fit  # CLIP runs only: ftfy / regex of the BPE tokenizer

  fresh = state.init_params(model, config, mesh, jax.random.key(config.train.seed))
  source = _init_source(config)
  if not source:
    return fresh
  if not is_run_dir(source):
    return fit.load_init_params(source, config, fresh, log, fresh=fresh)
  source_config = run_config(source)
  _, params, step = load_model(source_config, source, mesh, log=log)
  flat = _flat_host(params)
  if source_config.model.get("scan", False):
    from rsjax.convert import unscan_layout
    flat = unscan_layout(flat)
  return fit.fit_params(flat, source_config.model.to_dict(), config, fresh,
                        f"{source} (step {step})", log, fresh=fresh)


def params_digest(params) -> str:
  """sha256 over every leaf's path, dtype, shape and bytes, in path order."""
  h = hashlib.sha256()
  for key, value in sorted(_flat_host(params).items()):
    value = np.ascontiguousarray(value)
    h.update(f"{key}:{value.dtype}:{value.shape};".encode())
    h.update(value.tobytes())
  return h.hexdigest()


def frozen_base(config, model, mesh, log=console_log) -> tuple[dict, dict, dict]:
  """(trained params, frozen params, base reference) of a run with train.frozen, at its start."""
  params = starting_params(config, model, mesh, log)
  trained, frozen = trainable.Selection.of(config, params).split(params)
  source = _init_source(config)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(frozen))
  reference = {"init_checkpoint": os.path.abspath(source) if source else "",
               "seed": int(config.train.seed), "frozen": list(trainable.frozen_patterns(config.train)),
               "parameters": count, "digest": params_digest(frozen)}
  dtype = trainable.frozen_dtype(config.train)
  if dtype != "float32":  # after the digest, which is of the values as read
    frozen = jax.tree.map(lambda x: x.astype(dtype), frozen)
  return trained, frozen, reference


def check_base(saved: dict | None, now: dict, where: str) -> None:
  """Refuses a checkpoint trained on other frozen parameters than `now` gives."""
  if saved is None:
    raise CheckpointMismatchError(f"{where} records no frozen base, but train.frozen is "
                                  f"{tuple(now['frozen'])}: it was written by a run that trained "
                                  "every parameter; use that run's config")
  if saved["digest"] != now["digest"]:
    origin = lambda r: r["init_checkpoint"] or f"the initialisation of train.seed={r['seed']}"
    raise CheckpointMismatchError(
        f"{where} was trained on frozen parameters {saved['digest'][:12]} (from {origin(saved)}), "
        f"but init.checkpoint now gives {now['digest'][:12]} (from {origin(now)}): point "
        "init.checkpoint at the base the run was trained on")


def load_model(config, checkpoint: str, mesh, step: int | None = None,
               check_config: bool = False, log=console_log):
  """(model, params, step) from the latest (or given) checkpoint under `checkpoint` (a workdir or
  its checkpoints folder), with the frozen parameters of a train.frozen run joined back in.
  `check_config` also refuses a checkpoint written for other model.* keys."""
  ckpt = Checkpointer(checkpoint_dir(checkpoint))
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory}; train first")
    model = state.create_model(config)
    abstract, _ = state.state_layout(model, optim.make_optimizer(config.train), config, mesh)
    restored = ckpt.restore(step, abstract, config=config if check_config else None)
    base = ckpt.saved_base(step) if trainable.frozen_patterns(config.train) else None
  finally:
    ckpt.close()
  params = restored.params
  if trainable.frozen_patterns(config.train):
    _, frozen, reference = frozen_base(config, model, mesh, log=lambda *_: None)
    check_base(base, reference, f"checkpoint step {step} in {checkpoint_dir(checkpoint)}")
    log(f"base: {reference['parameters']:,} frozen parameters from "
        f"{reference['init_checkpoint'] or 'the seed'} (digest {reference['digest'][:12]} as recorded)")
    params = trainable.join(params, frozen)
  return model, params, int(step)


def _same_file(a: str, b: str) -> bool:
  with open(a, "rb") as fa, open(b, "rb") as fb:
    return fa.read() == fb.read()


def load_teacher(config, mesh, workdir: str, log=console_log):
  """((teacher model, its image size), its parameters) for distill.teacher (a run's workdir or a
  `rsjax convert` folder), or (None, None) when the config distills from none. The teacher reads
  the student's tokens, so both must use one tokenizer and context length."""
  source = config.distill.teacher if config.get("distill") else ""
  if not source:
    return None, None
  if not os.path.exists(source):
    raise ConfigError(f"config key 'distill.teacher': {source} does not exist (an rsjax run's "
                      "workdir or a `rsjax convert` folder)")
  if is_run_dir(source):
    teacher_config = run_config(source)
    model, params, step = load_model(teacher_config, source, mesh, log=log)
    size, name = int(teacher_config.data.image_size), f"{source} (step {step})"
    theirs, ours = (os.path.join(run_workdir(source), TOKENIZER_FILE),
                    os.path.join(workdir, TOKENIZER_FILE))
    if os.path.isfile(theirs) and os.path.isfile(ours) and not _same_file(theirs, ours):
      raise ConfigError(f"config key 'distill.teacher': {source} was trained with another "
                        f"tokenizer than this run's {ours}; the teacher reads the student's tokens "
                        "(start the student from the teacher's run with init.checkpoint, or set "
                        f"data.tokenizer_path={theirs})")
  else:
    from rsjax import convert
    from rsjax.convert import init_params as fit

    info, model_config, flat = convert.load_converted(source)
    if config.data.get("tokenizer_path", "") != "clip_bpe" and not str(
        config.data.get("tokenizer_path", "")).endswith(".txt.gz"):
      raise ConfigError(f"config key 'distill.teacher': {source} is a converted CLIP model, which "
                        "reads CLIP's BPE tokens; set data.tokenizer_path=clip_bpe")
    teacher_config = config.copy_and_resolve_references()
    with teacher_config.unlocked():
      teacher_config.model = model_config
      teacher_config.data.image_size = int(info["image_size"])
    model = state.create_model(teacher_config)
    abstract, _ = state.params_layout(model, teacher_config, mesh)
    params = fit.fit_params(flat, info["model"], teacher_config, abstract, source, log=lambda *_: None)
    size, name = int(info["image_size"]), f"{source} ({info['arch']})"
  if teacher_config.model.text.context_length != config.model.text.context_length:
    raise ConfigError(f"config key 'distill.teacher': {source} reads "
                      f"{teacher_config.model.text.context_length} tokens, this run "
                      f"{config.model.text.context_length} (model.text.context_length)")
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  log(f"distill: teacher {name}, {count / 1e6:.2f}M parameters at {size} px, weight "
      f"{config.distill.weight}")
  return (model, size), params
