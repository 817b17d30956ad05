"""Recall metrics against a brute-force reference built from full stable sorts, ties included."""

import jax.numpy as jnp
import numpy as np
import pytest

from rsjax import metrics
from rsjax.evaluation import recalls


def reference_ranks(sim: np.ndarray, text_to_image: np.ndarray):
  """Brute force: sort every row/column (stable, descending) and look the ground truth up."""
  n_img, n_txt = sim.shape
  i2t = np.full(n_img, n_txt)
  for i in range(n_img):
    order = np.argsort(-sim[i], kind="stable")
    positions = [np.where(order == j)[0][0] for j in np.flatnonzero(text_to_image == i)]
    if positions:
      i2t[i] = min(positions)
  t2i = np.empty(n_txt, int)
  for j in range(n_txt):
    order = np.argsort(-sim[:, j], kind="stable")
    t2i[j] = np.where(order == text_to_image[j])[0][0]
  return i2t, t2i


def reference_metrics(i2t, t2i):
  out = {}
  for name, ranks in (("i2t", i2t), ("t2i", t2i)):
    for k in (1, 5, 10):
      out[f"{name}_r{k}"] = 100.0 * sum(r < k for r in ranks) / len(ranks)
  out["mR"] = sum(out.values()) / 6
  return out


@pytest.mark.parametrize("quantize", [False, True])
def test_ranks_match_brute_force(quantize):
  rng = np.random.default_rng(0)
  n_img, per = 40, 5
  text_to_image = np.repeat(np.arange(n_img), per)
  rng.shuffle(text_to_image)
  sim = rng.normal(size=(n_img, n_img * per)).astype(np.float32)
  if quantize:  # few distinct values -> many ties
    sim = np.round(sim).astype(np.float32)
  ref_i2t, ref_t2i = reference_ranks(sim, text_to_image)
  t2i = np.asarray(metrics.text_to_image_ranks(jnp.asarray(sim), jnp.asarray(text_to_image)))
  i2t = np.asarray(metrics.image_to_text_ranks(jnp.asarray(sim), jnp.arange(n_img),
                                               jnp.asarray(text_to_image)))
  np.testing.assert_array_equal(t2i, ref_t2i)
  np.testing.assert_array_equal(i2t, ref_i2t)
  got = metrics.retrieval_metrics(i2t, t2i)
  want = reference_metrics(ref_i2t, ref_t2i)
  assert got == pytest.approx(want)
  if quantize:
    assert 0 < got["mR"] < 100


def test_all_ties_rank_by_index():
  sim = np.zeros((3, 6), np.float32)
  text_to_image = np.array([2, 2, 1, 0, 1, 0])
  i2t, t2i = reference_ranks(sim, text_to_image)
  np.testing.assert_array_equal(i2t, [3, 2, 0])  # first own caption by index
  np.testing.assert_array_equal(t2i, text_to_image)
  got_t2i = metrics.text_to_image_ranks(jnp.asarray(sim), jnp.asarray(text_to_image))
  np.testing.assert_array_equal(np.asarray(got_t2i), t2i)


def test_tiled_equals_untiled_and_reference():
  rng = np.random.default_rng(1)
  n_img = 37
  text_to_image = rng.integers(0, n_img, size=150)
  text_to_image[:n_img] = np.arange(n_img)  # every image has at least one caption
  img = rng.normal(size=(n_img, 8)).astype(np.float32)
  txt = rng.normal(size=(150, 8)).astype(np.float32)
  whole = recalls.retrieval_ranks(img, txt, text_to_image, tile=10_000)
  tiled = recalls.retrieval_ranks(img, txt, text_to_image, tile=7)
  ref = reference_ranks(img @ txt.T, text_to_image)
  for a, b, r in zip(whole, tiled, ref, strict=True):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, r)


def test_perfect_and_reversed_scores():
  n = 20
  text_to_image = np.arange(n)
  perfect = np.eye(n, dtype=np.float32)
  i2t, t2i = recalls.retrieval_ranks(perfect, np.eye(n, dtype=np.float32), text_to_image)
  assert metrics.retrieval_metrics(i2t, t2i)["mR"] == 100.0
  i2t, t2i = recalls.retrieval_ranks(perfect, -np.eye(n, dtype=np.float32), text_to_image)
  assert metrics.retrieval_metrics(i2t, t2i)["mR"] == 0.0
