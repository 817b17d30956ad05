"""Training on change sets: date sequences and their 'changed' flags through the in-memory
pipeline (the same flip / turn for every date), and the change loss of the train step."""

import numpy as np

from rsjax.data import augment, pipeline


DIHEDRAL = [augment.Dihedral(flip, turns) for flip in (False, True) for turns in range(4)]


def sequences(n=8, dates=2, size=8):
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (n, dates, size, size, 3), dtype=np.uint8)


def test_sequences_and_extras_reach_the_batch_and_every_date_turns_alike():
  seqs = sequences()
  tokens = np.arange(8 * 2 * 5, dtype=np.int32).reshape(8, 2, 5) + 1
  changed = np.array([True, False] * 4)
  ds = pipeline.train_dataset(seqs, tokens, batch_size=4, seed=0, dihedral=True,
                              extras={"changed": changed})
  batch = ds[0]
  assert batch["image"].shape == (4, 2, 8, 8, 3) and batch["changed"].shape == (4,)
  for image, flag in zip(batch["image"], batch["changed"]):
    # which record, and which of the 8 transforms: the one that maps its first date to this
    matches = [(i, t) for i in range(8) for t in DIHEDRAL
               if np.array_equal(t.apply_image(seqs[i, 0]), image[0])]
    assert len(matches) == 1
    i, t = matches[0]
    assert np.array_equal(t.apply_image(seqs[i]), image)  # the second date: the same transform
    assert flag == changed[i]


def test_a_sequence_transform_equals_each_date_alone():
  seqs = sequences(n=1, dates=3)[0]
  for t in DIHEDRAL:
    assert np.array_equal(t.apply_image(seqs), np.stack([t.apply_image(d) for d in seqs]))


CHANGE_CONFIG = "configs/rs_synth_change.py:runlocal"


def tiny_change_overrides(*extra):
  from helpers import TINY
  keep = [o for o in TINY if o.startswith(("model.", "data.image_size"))]
  return keep + ["data.num_train=32", "data.num_val=8", "data.num_test=16", "train.steps=2",
                 "train.checkpoint_every=2", "model.temporal.heads=2", *extra]


def test_a_change_encoder_trains_on_pairs_and_reports_change_retrieval(tmp_path):
  import json

  from rsjax.config import load_config
  from rsjax.train import loop as train_loop

  config = load_config(CHANGE_CONFIG, tiny_change_overrides("data.cache_dir=" + str(tmp_path)))
  results = train_loop.train(config, str(tmp_path / "run"))
  change = results["change"]
  assert {"all", "changed", "unchanged"} <= set(change["recalls"])
  assert set(change["detection"]) == {"accuracy", "changed_recall", "unchanged_recall", "balanced"}
  assert set(change["captioning"]["all"]) == {"bleu4", "cider_d"}
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert all(r["change_loss"] > 0 for r in rows if "loss" in r)


def test_a_change_encoder_refuses_single_images(tmp_path):
  import pytest

  from helpers import tiny_config
  from rsjax.errors import ConfigError
  from rsjax.models.temporal import default_temporal_config
  from rsjax.train import loop as train_loop

  config = tiny_config()
  with config.unlocked():
    config.model.temporal = default_temporal_config()
  with pytest.raises(ConfigError, match="'model.temporal': a change encoder takes date sequences"):
    train_loop.train(config, str(tmp_path / "run"))
