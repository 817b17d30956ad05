"""RS-Synth temporal train/val/test splits (rsjax/data/rs_synth/temporal_splits.py)."""

from __future__ import annotations

import numpy as np
import pytest

from rsjax.data.rs_synth.challenges import ChallengeSpec, render_temporal
from rsjax.data.rs_synth.temporal_splits import TemporalSplitSpec, load_or_generate_temporal
from rsjax.errors import ConfigError

SPEC = TemporalSplitSpec(image_size=32, num_train=40, num_val=8, num_test=8)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
  cache = tmp_path_factory.mktemp("cache")
  return load_or_generate_temporal(SPEC, cache, progress=False), cache


def test_cached_reread_equal_and_deterministic(splits, tmp_path):
  first, cache = splits
  fresh = load_or_generate_temporal(SPEC, tmp_path, progress=False)  # regenerated, same seed
  cached = load_or_generate_temporal(SPEC, cache, progress=False)    # read back from the cache
  for again in (fresh, cached):
    for split in first:
      np.testing.assert_array_equal(first[split][0], again[split][0])
      assert first[split][1] == again[split][1]
  assert first["train"][0].shape == (40, 2, 32, 32, 3)


def test_no_example_shared_with_challenge_subset_or_other_splits(splits):
  first, _ = splits
  cspec = ChallengeSpec(seed=0, image_size=32, num_examples=0)
  train = first["train"][0]
  for i in range(8):
    _, after, _ = render_temporal(cspec, i)
    assert not np.array_equal(after, train[i, 1])
  assert not np.array_equal(first["val"][0], first["test"][0])


def test_change_types_present(splits):
  first, _ = splits
  kinds = {r["change"] for r in first["train"][1]}
  assert {"none", "buildings_added", "buildings_removed", "road_built"} <= kinds


def test_no_change_share_follows_the_spec():
  from rsjax.data.rs_synth.temporal_splits import render_temporal_example

  for share in (0.0, 0.5, 1.0):
    spec = TemporalSplitSpec(image_size=32, no_change=share)
    unchanged = [not render_temporal_example(spec, "train", i)[1]["changed"] for i in range(60)]
    if share in (0.0, 1.0):
      assert all(u == bool(share) for u in unchanged), share
    else:
      assert 0.3 < np.mean(unchanged) < 0.7


def test_bad_dates_and_shares_refused():
  with pytest.raises(ConfigError, match="data.dates"):
    TemporalSplitSpec(dates=1)
  for share in (-0.1, 1.5):
    with pytest.raises(ConfigError, match="data.no_change"):
      TemporalSplitSpec(no_change=share)
