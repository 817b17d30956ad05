"""Checkpoints with orbax: train state (params, optimizer state, step), data-iterator state, config.

Each step is written to a temporary directory and renamed when complete (orbax's atomic save), so a
run killed mid-write never leaves a checkpoint that looks complete; `all_steps` only sees finished
ones. Restoring takes the abstract target state with shardings, so a checkpoint lands directly in the
current mesh's layout. Before reading any array, a checkpoint is checked against the model it is meant
for: every parameter whose path or shape differs is named, and so is every differing `model.*` config
key. A checkpoint that fails the check or cannot be read is refused; `restore_latest(fallback=True)`
then tries the next older one.

With `async_save` a save copies the state to host memory and returns; orbax writes the files in a
background thread and renames the directory when every process has finished. A write that fails
there is reported by the next save, or by `close`, naming the step that was lost; the previous
checkpoint stays intact either way. The data-iterator item is written in the blocking part, so it
records the position of the step being saved (rsjax/iterator_checkpoint.py).
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import orbax.checkpoint as ocp

from rsjax.errors import InputError, RsjaxError
from rsjax.iterator_checkpoint import IteratorHandler, IteratorPositionError, IteratorRestore, \
    IteratorSave


class CheckpointError(RsjaxError, RuntimeError):
  """A checkpoint could not be written, read, or does not fit the model."""


class CheckpointMismatchError(CheckpointError, InputError):
  """The checkpoint's parameters or model config differ from the model being restored."""
  exit_code, kind = InputError.exit_code, InputError.kind


class CheckpointReadError(CheckpointError, InputError):
  """The checkpoint's files are missing, truncated or corrupt."""
  exit_code, kind = InputError.exit_code, InputError.kind


class CheckpointWriteError(CheckpointError):
  """Saving failed (disk full, read-only directory...); older checkpoints are untouched."""


def _path_name(path) -> str:
  """A tree path as 'params/img/blocks_0/qkv_kernel', the same for dataclass, dict and list keys."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return "/".join(parts)


def _shapes(tree) -> dict[str, tuple]:
  return {_path_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _listed(items: list[str], limit: int = 20) -> str:
  more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
  return "\n  " + "\n  ".join(items[:limit]) + more


class Checkpointer:
  """Thin wrapper over ocp.CheckpointManager with the three items an rsjax run saves."""

  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3, async_save: bool = False):
    self.directory = os.path.abspath(os.fspath(directory))
    self.pending: int | None = None  # the step an asynchronous save is still writing
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save),
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "data": IteratorHandler(),
            "config": ocp.JsonCheckpointHandler(),
            # Runs with frozen parameters (train.frozen): what they were read from and their
            # digest, since the state holds only the trained ones (rsjax/runs.py).
            "base": ocp.JsonCheckpointHandler(),
        })
    self._complete = self.manager.latest_step()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def known_complete_step(self) -> int | None:
    """The newest step known to be completely written, without asking orbax: its calls may wait
    on a lock an unfinished background save holds (the step watchdog reads this)."""
    return self._complete

  def save(self, step: int, state, data_iterator, config: ml_collections.ConfigDict,
           base: dict | None = None) -> None:
    """Writes step `step` (in the background with async_save); a failed write, of this step or of
    the previous asynchronous one, raises CheckpointWriteError naming the step lost and the one
    kept. `base`: the frozen parameters' reference (a JSON-able dict), for runs that freeze some."""
    self.wait()  # the previous step is complete (or reported) before this one starts
    previous = self.latest_step()
    items = dict(state=ocp.args.StandardSave(state),
                 data=IteratorSave(data_iterator),
                 config=ocp.args.JsonSave(config.to_dict()))
    if base is not None:
      items["base"] = ocp.args.JsonSave(base)
    try:
      self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # OSError, or the tensorstore/orbax error that wraps one
      raise self._write_error(step, previous, e) from e
    self.pending = step
    if not self.manager.is_saving_in_progress():  # written synchronously
      self.wait()

  def wait(self) -> None:
    """Blocks until an asynchronous save has finished; raises CheckpointWriteError if it failed."""
    if self.pending is None:
      return
    step, self.pending = self.pending, None
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:
      self.manager.reload()
      raise self._write_error(step, self.latest_step(), e) from e
    self._complete = step

  def _write_error(self, step: int, kept: int | None, e: Exception) -> "CheckpointWriteError":
    kept = (f"the previous checkpoint (step {kept}) is intact" if kept is not None
            else "no earlier checkpoint exists")
    return CheckpointWriteError(
        f"could not write the checkpoint of step {step} to {self.directory}: "
        f"{type(e).__name__}: {e}\n{kept}; fix the cause (disk space, permissions) and rerun the "
        "same command to resume")

  def _json_item(self, step: int, name: str) -> dict | None:
    """A JSON item of checkpoint `step`, or None when the checkpoint has none of that name."""
    if not os.path.isdir(os.path.join(self.directory, str(step), name)):
      return None
    try:
      return self.manager.restore(step, args=ocp.args.Composite(
          **{name: ocp.args.JsonRestore()}))[name]
    except Exception as e:
      raise CheckpointReadError(f"checkpoint step {step} in {self.directory}: its {name} record "
                                f"is unreadable: {type(e).__name__}: {e}") from e

  def saved_config(self, step: int) -> dict:
    """The run config checkpoint `step` was written with (as a plain dict)."""
    config = self._json_item(step, "config")
    if config is None:
      raise CheckpointReadError(f"checkpoint step {step} in {self.directory} has no config record")
    return config

  def saved_base(self, step: int) -> dict | None:
    """The frozen-parameter reference checkpoint `step` was written with, or None."""
    return self._json_item(step, "base")

  def check_compatible(self, step: int, abstract_state,
                       config: ml_collections.ConfigDict | None = None) -> None:
    """Raises CheckpointMismatchError naming every parameter path or shape and every `model.*`
    config key in which checkpoint `step` differs from `abstract_state` / `config`."""
    where = f"checkpoint step {step} in {self.directory}"
    try:
      metadata = self.manager.item_metadata(step)
      saved = _shapes(metadata["state"])
    except Exception as e:
      raise CheckpointReadError(f"{where} is unreadable (metadata): {type(e).__name__}: {e}") from e
    wanted = _shapes(abstract_state)
    problems = [f"{k}: checkpoint {saved[k]} vs model {wanted[k]}"
                for k in sorted(wanted.keys() & saved.keys()) if saved[k] != wanted[k]]
    problems += [f"{k}: missing from the checkpoint" for k in sorted(wanted.keys() - saved.keys())]
    problems += [f"{k}: in the checkpoint but not in the model"
                 for k in sorted(saved.keys() - wanted.keys())]
    if config is not None and not problems:
      try:
        saved_config = self.manager.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore()))["config"]
      except Exception as e:
        raise CheckpointReadError(f"{where}: its config is unreadable: {e}") from e
      # Through JSON as the saved copy went, so tuples compare equal to the lists they became.
      ours = _flat(json.loads(json.dumps(config.model.to_dict())))
      theirs = _flat(saved_config.get("model", {}))
      # A key the checkpoint lacks was added to rsjax after it was written: its default applies.
      problems += [f"model.{k}: checkpoint {theirs[k]!r} vs config {ours.get(k)!r}"
                   for k in sorted(theirs) if ours.get(k) != theirs[k]]
    if problems:
      raise CheckpointMismatchError(f"{where} does not fit this model:" + _listed(problems))

  def restore(self, step: int, abstract_state, data_iterator=None,
              config: ml_collections.ConfigDict | None = None):
    """Returns the state at `step`, laid out as `abstract_state`; restores the iterator in place.

    Checks the checkpoint against the model first (and against `config.model` when given)."""
    self.check_compatible(step, abstract_state, config)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = IteratorRestore(data_iterator)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except IteratorPositionError as e:
      raise CheckpointMismatchError(f"checkpoint step {step} in {self.directory}: {e}") from e
    except Exception as e:
      raise CheckpointReadError(
          f"checkpoint step {step} in {self.directory} is unreadable (truncated or corrupt "
          f"files?): {type(e).__name__}: {e}") from e
    return restored["state"]

  def restore_latest(self, abstract_state, data_iterator=None,
                     config: ml_collections.ConfigDict | None = None, fallback: bool = False,
                     log=print):
    """(step, state) from the newest checkpoint, or (None, None) when there is none.

    A refused checkpoint raises, unless `fallback`: then the next older one is tried, and so on.
    """
    steps = self.all_steps()[::-1]
    for i, step in enumerate(steps):
      try:
        return step, self.restore(step, abstract_state, data_iterator, config)
      except CheckpointError as e:
        if not fallback:
          hint = (" (train.restore_fallback=True would fall back to step "
                  f"{steps[i + 1]})") if i + 1 < len(steps) else ""
          raise type(e)(f"{e}{hint}") from e
        if i + 1 == len(steps):
          raise CheckpointError(f"{e}\nno older checkpoint to fall back to") from e
        moved = self._set_aside(step)
        log(f"refusing checkpoint step {step}: {e}\nmoved it to {moved} (kept for inspection); "
            f"falling back to step {steps[i + 1]} (train.restore_fallback=True)")
    return None, None

  def _set_aside(self, step: int) -> str:
    """Moves a refused checkpoint out of the manager's way (training will write that step again)
    into <workdir>/refused_checkpoints/, never deleting it."""
    target_dir = os.path.join(os.path.dirname(self.directory), "refused_checkpoints")
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, f"{step}-{int(time.time())}")
    os.rename(os.path.join(self.directory, str(step)), target)
    self.manager.reload()
    self._complete = self.manager.latest_step()
    return target

  def close(self) -> None:
    """Waits for an asynchronous save (raising CheckpointWriteError if it failed) and closes."""
    try:
      self.wait()
    finally:
      self.manager.close()


def abstract_like(tree, shardings):
  """ShapeDtypeStructs carrying the target shardings, the form orbax restores into."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
