"""Label-relevance metrics (RSSCN7-style sets) against loop-by-loop references, ties included."""

import numpy as np
import pytest

from rsjax import metrics
from rsjax.evaluation import labels as label_eval
from rsjax.evaluation.hashing import duch_query_split


def ref_ap(scores, relevant, k=None):
  """One query: walk the ranking (higher first, ties by index) and average precision at hits."""
  order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:k]
  hits, total = 0, 0.0
  for rank, j in enumerate(order, 1):
    if relevant[j]:
      hits += 1
      total += hits / rank
  return total / hits if hits else 0.0


def unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("k", [None, 1, 5, 20])
def test_average_precision_matches_reference_with_ties(k):
  rng = np.random.default_rng(k or 0)
  scores = rng.integers(0, 4, size=(6, 30)).astype(np.float32)  # many equal scores
  relevant = rng.random((6, 30)) < 0.3
  relevant[0] = False  # a query without relevant items scores 0
  got = metrics.dense_average_precision(scores, relevant, k)
  want = [ref_ap(s, r, k) for s, r in zip(scores, relevant, strict=True)]
  np.testing.assert_allclose(got, want, rtol=1e-12)
  assert got[0] == 0.0


def test_label_metrics_match_reference():
  rng = np.random.default_rng(3)
  n, c, e = 60, 4, 8
  labels = rng.integers(0, c, n)
  classes = unit(rng.standard_normal((c, e)))
  images = unit(classes[labels] + 0.8 * rng.standard_normal((n, e)))
  images[7] = images[3]  # equal embeddings: a tie in every ranking
  codes = {b: label_eval.simhash_codes(images, b, seed=1) for b in (16, 32)}
  got = label_eval.label_metrics(images, labels, classes, codes)

  scores = classes @ images.T
  assert got["zero_shot_top1"] == pytest.approx(100 * np.mean(scores.argmax(0) == labels))
  t2i = [ref_ap(scores[k], labels == k) for k in range(c)]
  assert got["t2i_map"] == pytest.approx(100 * np.mean(t2i))
  q, r = duch_query_split(n)
  dense = [ref_ap(images[i] @ images[r].T, labels[r] == labels[i], 20) for i in q]
  assert got["i2i_map@20_dense"] == pytest.approx(100 * np.mean(dense))
  for b, code in codes.items():
    hamming = (code[q][:, None, :] != code[r][None, :, :]).sum(-1)
    want = [ref_ap(-hamming[j].astype(float), labels[r] == labels[i], 20) for j, i in enumerate(q)]
    assert got[f"i2i_map@20_{b}bit"] == pytest.approx(100 * np.mean(want), rel=1e-5)


def test_simhash_codes_are_signs_of_a_seeded_projection():
  rng = np.random.default_rng(0)
  emb = rng.standard_normal((10, 6)).astype(np.float32)
  a = label_eval.simhash_codes(emb, 32, seed=5)
  assert a.shape == (10, 32) and set(np.unique(a)) <= {-1.0, 1.0}
  np.testing.assert_array_equal(a, label_eval.simhash_codes(emb, 32, seed=5))
  assert not np.array_equal(a, label_eval.simhash_codes(emb, 32, seed=6))
  np.testing.assert_array_equal(label_eval.simhash_codes(-emb, 32, seed=5)[a < 0], 1.0)


def test_label_metrics_refuse_mismatched_inputs():
  emb = unit(np.ones((4, 3)))
  with pytest.raises(ValueError, match="4 image embeddings but 3 labels"):
    label_eval.label_metrics(emb, np.zeros(3, int), emb[:2])
  with pytest.raises(ValueError, match="labels must lie in"):
    label_eval.label_metrics(emb, np.array([0, 1, 2, 5]), emb[:2])
  with pytest.raises(ValueError, match="16-bit codes have shape"):
    label_eval.label_metrics(emb, np.zeros(4, int), emb[:2], {16: np.ones((4, 8))})
