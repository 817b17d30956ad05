"""Asynchronous checkpoints (train.async_checkpoints): a write that fails in the background is
reported at the next save or at close, naming the step lost and the step kept, and loses nothing
else."""

import errno
import os
import time

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rsjax.checkpoint import Checkpointer, CheckpointWriteError


class _DiskFull:
  """A commit future of the background write that fails as a full disk would."""

  def result(self, timeout=None):
    time.sleep(0.2)  # after the save call has returned: the loop has moved on
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "state/array")


def _items():
  state = {"w": jnp.arange(4.0)}
  iterator = iter(grain.MapDataset.range(100).to_iter_dataset())
  return state, iterator, ml_collections.ConfigDict({"model": {}})


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


@pytest.mark.parametrize("reported_by", ["next_save", "close"])
def test_a_failed_background_write_is_reported_naming_the_step(tmp_path, monkeypatch, reported_by):
  state, iterator, config = _items()
  ckpt = Checkpointer(tmp_path / "ckpt", async_save=True)
  ckpt.save(2, state, iterator, config)
  ckpt.wait()
  assert ckpt.known_complete_step() == 2

  original = ocp.StandardCheckpointHandler.async_save

  async def failing(self, *args, **kwargs):
    return [*(await original(self, *args, **kwargs) or []), _DiskFull()]

  monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", failing)
  next(iterator)
  ckpt.save(4, {"w": state["w"] + 1}, iterator, config)  # returns: the write goes on behind
  monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", original)
  message = ("could not write the checkpoint of step 4 to .*No space left on device.*\n"
             "the previous checkpoint \\(step 2\\) is intact")
  with pytest.raises(CheckpointWriteError, match=message):
    if reported_by == "next_save":
      ckpt.save(6, state, iterator, config)
    else:
      ckpt.close()
  assert ckpt.known_complete_step() == 2
  ckpt = Checkpointer(tmp_path / "ckpt")
  assert ckpt.all_steps() == [2]
  restored = ckpt.restore(2, _abstract(state), iter(grain.MapDataset.range(100).to_iter_dataset()))
  np.testing.assert_array_equal(restored["w"], state["w"])
  ckpt.close()


def test_an_async_save_records_the_iterator_position_of_its_step(tmp_path):
  """The loop advances the iterator while the background write goes on; the checkpoint still
  holds the position at the save call."""
  state, iterator, config = _items()
  for _ in range(3):
    next(iterator)
  ckpt = Checkpointer(tmp_path / "ckpt", async_save=True)
  ckpt.save(3, state, iterator, config)
  after = [next(iterator) for _ in range(5)]  # while the write may still be running
  ckpt.close()
  resumed = iter(grain.MapDataset.range(100).to_iter_dataset())
  Checkpointer(tmp_path / "ckpt").restore(3, _abstract(state), resumed)
  assert [next(resumed) for _ in range(5)] == after == [3, 4, 5, 6, 7]
