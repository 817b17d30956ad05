"""The hash-code diagnostics (rsjax/evaluation/hash_diagnostics.py) on codes built to have a known
balance, correlation and saturation, against plain NumPy loops."""

import numpy as np

from rsjax.evaluation import hash_diagnostics as hd


def _loop_abs_corr(codes):
  k = codes.shape[1]
  vals = []
  for i in range(k):
    for j in range(i + 1, k):
      a, b = codes[:, i], codes[:, j]
      vals.append(0.0 if a.std() == 0 or b.std() == 0 else abs(np.corrcoef(a, b)[0, 1]))
  return np.mean(vals)


def test_balance_correlation_and_dead_bits():
  rng = np.random.default_rng(0)
  codes = rng.choice([-1.0, 1.0], size=(400, 32))
  codes[:, 3] = codes[:, 0]    # a redundant bit inside the 16-bit prefix
  codes[:, 20] = -codes[:, 5]  # anti-correlated: |corr| 1 too
  codes[:, 7] = 1.0            # a dead bit
  d = hd.code_diagnostics(codes, (16, 32, 64))
  assert list(d["balance"]) == ["16", "32"]  # prefixes longer than the code are left out
  np.testing.assert_allclose(d["balance"]["16"], np.abs(codes[:, :16].mean(0)).mean())
  assert d["dead_bits"] == {"16": 1, "32": 1}
  for b in (16, 32):
    np.testing.assert_allclose(d["correlation"][str(b)], _loop_abs_corr(codes[:, :b]), rtol=1e-9)
  # the repeated bit weighs more in the short prefix than in the whole code
  assert d["correlation"]["16"] > d["correlation"]["32"]
  assert "saturated" not in d


def test_independent_balanced_bits_score_low():
  codes = np.random.default_rng(1).choice([-1.0, 1.0], size=(4000, 16))
  d = hd.code_diagnostics(codes, (16,))
  assert d["balance"]["16"] < 0.05 and d["correlation"]["16"] < 0.05 and d["dead_bits"]["16"] == 0


def test_saturated_fraction():
  relaxed = np.tanh(np.array([[0.1, 3.0, -3.0, -0.5]]))
  assert hd.saturated_fraction(relaxed) == 0.5
  d = hd.code_diagnostics(np.sign(relaxed), (16,), relaxed)
  assert d["saturated"] == 0.5
  assert "saturated 50.0%" in hd.summary({"image": d})
