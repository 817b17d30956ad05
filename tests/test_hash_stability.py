"""The two-stage hashing recipe of configs/rsscn7_scratch.py (`codes=RUN`: the hashing heads alone
on a trained run's frozen towers, with strong bit balance and decorrelation), the hashing
evaluator's per-prefix label metrics, and the benchmark's table rows. The recipe's end-to-end run
with the hashing evaluator (diagnostics included) is tests/test_label_training.py's."""

import numpy as np
import pytest

from rsjax import trainable
from rsjax.config import load_config
from rsjax.evaluation import hashing
from test_label_training import RSSCN7_CONFIG


def test_codes_stage_freezes_all_but_the_hashing_heads(tmp_path):
  one = load_config(RSSCN7_CONFIG)
  assert one.train.hash_weights.decorrelation == 0.0 and one.train.hash_weights.balance == 0.01
  two = load_config(f"{RSSCN7_CONFIG}:codes={tmp_path}")
  assert two.init.checkpoint == str(tmp_path)
  assert two.train.hash_weights.balance == 1.0 and two.train.hash_weights.decorrelation == 1.0
  params = {"image": {"conv": {"kernel": np.zeros(2)}}, "text": {"embed": np.zeros(2)},
            "head": {"logit_scale": np.zeros(())},
            "image_hash": {"hash": {"kernel": np.zeros(2), "bias": np.zeros(1)}},
            "text_hash": {"hash": {"kernel": np.zeros(2), "bias": np.zeros(1)}}}
  trained, frozen = trainable.Selection.of(two, params).split(params)
  assert set(trained) == {"image_hash", "text_hash"}
  assert set(frozen) == {"image", "text", "head"}


def test_label_prefix_metrics_score_the_leading_bits():
  """Codes whose leading 16 bits are the class and whose other 16 are noise: the 16-bit prefix
  ranks perfectly by class, the 32-bit code less well."""
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(4), 30)
  class_codes = rng.choice([-1.0, 1.0], size=(4, 16))
  img = np.concatenate([class_codes[labels], rng.choice([-1.0, 1.0], size=(120, 16))], 1)
  txt = np.repeat(img, 2, axis=0)  # two captions per image, coded as their image
  text_to_image = np.repeat(np.arange(120), 2)
  out = hashing.evaluate_hashing(img, txt, text_to_image, labels)
  assert set(out["prefix"]) == {"16"}
  assert out["prefix"]["16"]["t2i"] == pytest.approx(100.0)
  assert out["prefix"]["16"]["i2t"] == pytest.approx(100.0)
  assert out["label"]["t2i"]["map@20"] < 100.0


def test_benchmark_rows_and_summary():
  from benchmarks import hash_stability as bench
  diag = {"correlation": {"16": 0.2, "32": 0.2, "64": 0.3}, "saturated": 0.5,
          "dead_bits": {"16": 1, "32": 1, "64": 2}}
  val = {"labels": {"i2i_map@20_16bit": 60.0, "i2i_map@20_32bit": 65.0, "i2i_map@20_64bit": 70.0,
                    "i2i_map@20_dense": 71.0},
         "hashing": {"bits": 64, "prefix": {"16": {"t2i": 50.0}, "32": {"t2i": 55.0}},
                     "label": {"t2i": {"map@20": 58.0}}, "diagnostics": {"image": diag}}}
  a = bench.row("after", 0, val)
  assert [a[c] for c in bench.COLUMNS] == [60.0, 65.0, 70.0, 50.0, 55.0, 58.0, 71.0]
  assert (a["dead_16"], a["dead_64"]) == (1, 2)
  b = dict(a, seed=1, i2i_map20_16=64.0)
  mean, spread = bench.summarize([a, b])
  assert mean["i2i_map20_16"] == 62.0 and spread["i2i_map20_16"] == 4.0
  assert spread["dense_i2i_map20"] == 0.0
