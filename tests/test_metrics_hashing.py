"""Hashing and zero-shot metrics against brute-force NumPy references, ties included."""

import numpy as np
import pytest

from rsjax import metrics
from rsjax.evaluation import hashing


def reference_hashing(q: np.ndarray, db: np.ndarray, q_ids, db_ids, ks, radius=2):
  """Loops over queries with a stable sort of the distances: the textbook definitions."""
  bits = q.shape[1]
  out = {f"ap@{k}": [] for k in ks} | {f"p@{k}": [] for k in ks}
  radius_precision, pr_p, pr_r = [], [[] for _ in range(bits + 1)], [[] for _ in range(bits + 1)]
  for i in range(len(q)):
    dist = np.array([int(np.sum(q[i] != row)) for row in db])
    rel = np.array([q_ids[i] == d for d in db_ids])
    ranked = rel[np.argsort(dist, kind="stable")]
    for k in ks:
      top = ranked[:k]
      hits = [j for j in range(k) if top[j]]
      ap = sum(top[: j + 1].sum() / (j + 1) for j in hits) / len(hits) if hits else 0.0
      out[f"ap@{k}"].append(ap)
      out[f"p@{k}"].append(top.sum() / k)
    found = dist <= radius
    radius_precision.append(rel[found].sum() / found.sum() if found.any() else 0.0)
    for r in range(bits + 1):
      f = dist <= r
      if f.any():
        pr_p[r].append(rel[f].sum() / f.sum())
      if rel.any():
        pr_r[r].append(rel[f].sum() / rel.sum())
  res = {key: 100 * np.mean(v) for key, v in out.items()}
  res["p_r2"] = 100 * np.mean(radius_precision)
  res["precision"] = [np.mean(v) if v else 0.0 for v in pr_p]
  res["recall"] = [np.mean(v) if v else 0.0 for v in pr_r]
  return res


@pytest.mark.parametrize("bits,n_db,n_q", [(8, 60, 13), (16, 150, 21)])
def test_hashing_metrics_match_brute_force(bits, n_db, n_q):
  rng = np.random.default_rng(bits)
  # Few bits and many items: distances tie a lot, so the tie rule is exercised.
  db = rng.choice([-1.0, 1.0], size=(n_db, bits)).astype(np.float32)
  q = rng.choice([-1.0, 1.0], size=(n_q, bits)).astype(np.float32)
  q[0] = db[3]  # an exact match: distance 0, inside radius 2
  db_ids = rng.integers(0, 5, n_db)
  q_ids = rng.integers(0, 6, n_q)  # id 5 never occurs in the database: no relevant items
  got = hashing.hashing_metrics(q, db, q_ids, db_ids, tile=4, ks=(20, 100, None))
  ks = (20, min(100, n_db), n_db)
  want = reference_hashing(q, db, q_ids, db_ids, ks)
  for name, k in zip((20, 100, "all"), ks, strict=True):
    assert got[f"map@{name}"] == pytest.approx(want[f"ap@{k}"], abs=1e-4)
    assert got[f"p@{name}"] == pytest.approx(want[f"p@{k}"], abs=1e-4)
  assert got["p_r2"] == pytest.approx(want["p_r2"], abs=1e-4)
  np.testing.assert_allclose(got["pr_curve"]["precision"], want["precision"], atol=1e-6)
  np.testing.assert_allclose(got["pr_curve"]["recall"], want["recall"], atol=1e-6)
  assert got["pr_curve"]["recall"][-1] == pytest.approx(1.0)
  assert 0 < got["map@20"] < 100


def test_hashing_tiled_equals_untiled():
  rng = np.random.default_rng(3)
  db = rng.choice([-1.0, 1.0], size=(90, 16)).astype(np.float32)
  q = rng.choice([-1.0, 1.0], size=(31, 16)).astype(np.float32)
  ids_db, ids_q = rng.integers(0, 4, 90), rng.integers(0, 4, 31)
  assert (hashing.hashing_metrics(q, db, ids_q, ids_db, tile=5)
          == hashing.hashing_metrics(q, db, ids_q, ids_db, tile=1000))


def test_hamming_from_codes_matches_counting():
  rng = np.random.default_rng(4)
  a = rng.choice([-1.0, 1.0], size=(7, 64)).astype(np.float32)
  b = rng.choice([-1.0, 1.0], size=(11, 64)).astype(np.float32)
  want = (a[:, None, :] != b[None, :, :]).sum(-1)
  np.testing.assert_array_equal(np.asarray(metrics.hamming_from_codes(a, b)), want)


def test_perfect_codes_give_full_map():
  """Codes equal to a class prototype: every relevant item at distance 0, ranked first."""
  rng = np.random.default_rng(5)
  protos = rng.choice([-1.0, 1.0], size=(4, 32)).astype(np.float32)
  labels = np.repeat(np.arange(4), 10)
  got = hashing.hashing_metrics(protos[labels], protos[labels], labels, labels)
  assert got["map@all"] == pytest.approx(100.0)
  assert got["p_r2"] == pytest.approx(100.0)
  assert got["p@20"] == pytest.approx(50.0)  # only 10 relevant items exist


def test_evaluate_hashing_pairing_and_label():
  rng = np.random.default_rng(6)
  m, per = 30, 3
  text_to_image = np.repeat(np.arange(m), per)
  img = rng.choice([-1.0, 1.0], size=(m, 16)).astype(np.float32)
  txt = img[text_to_image].copy()
  txt[:, 0] *= -1  # each caption one bit away from its image
  labels = rng.integers(0, 3, m)
  out = hashing.evaluate_hashing(img, txt, text_to_image, labels)
  q, r = hashing.duch_query_split(m)
  assert len(q) == 6 and len(r) == 24 and not set(q) & set(r)
  want = reference_hashing(img[:, :], txt, np.arange(m), text_to_image, (20,))
  assert out["pairing"]["i2t"]["map@20"] == pytest.approx(want["ap@20"], abs=1e-4)
  q_txt = np.flatnonzero(np.isin(text_to_image, q))
  want = reference_hashing(txt[q_txt], img[r], labels[text_to_image][q_txt], labels[r], (20,))
  assert out["label"]["t2i"]["map@20"] == pytest.approx(want["ap@20"], abs=1e-4)
  assert out["pairing"]["t2i"]["p_r2"] > 0


def test_zero_shot_predictions_and_accuracy():
  rng = np.random.default_rng(7)
  scores = np.round(rng.normal(size=(50, 4)))  # ties: the first maximum wins
  pred = np.asarray(metrics.zero_shot_predictions(scores.astype(np.float32), np.eye(4, dtype=np.float32)))
  np.testing.assert_array_equal(pred, [int(np.flatnonzero(s == s.max())[0]) for s in scores])
  labels = rng.integers(0, 4, 50)
  got = metrics.classification_metrics(pred, labels, ["a", "b", "c", "d"])
  assert got["top1"] == pytest.approx(100 * np.mean(pred == labels))
  for c, name in enumerate("abcd"):
    assert got["per_class"][name] == pytest.approx(100 * np.mean(pred[labels == c] == c))
