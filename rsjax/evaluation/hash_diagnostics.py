"""What a hashing head's codes look like: per-bit balance, correlation between bits, saturation.

Users tuning short codes need to see why a 16-bit prefix ranks worse than the 64-bit code. Three
views of one split's codes, all from arrays on the host (NumPy):
- balance: the mean of each bit over the items; 0 is a bit that halves the set, +-1 a bit that
  is the same for every item (it carries no information);
- correlation: mean |Pearson correlation| over the pairs of bits within each leading prefix; a
  redundant bit repeats another one and adds nothing to the Hamming distance's resolution;
- saturation: the fraction of relaxed units |tanh(beta * z)| above a threshold; a saturated unit
  has almost no gradient (1 - h^2), so its sign stopped learning.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

SATURATION = 0.95  # |h| above this: the tanh's gradient 1 - h^2 is below 0.1
DEAD_BALANCE = 0.9  # |mean of a bit| above this: the bit is the same for 95% of the items


def bit_balance(codes: np.ndarray) -> np.ndarray:
  """codes [N, K] in {-1, +1} -> the mean of each bit [K] in [-1, 1]."""
  return np.asarray(codes, np.float64).mean(axis=0)


def bit_correlation(codes: np.ndarray) -> np.ndarray:
  """codes [N, K] -> |Pearson correlation| between bits [K, K], diagonal 0. A constant bit has
  no correlation (0) with the others; it shows in bit_balance instead."""
  x = np.asarray(codes, np.float64)
  x = x - x.mean(axis=0)
  norm = np.sqrt((x * x).sum(axis=0))
  x = x / np.where(norm > 0, norm, 1.0)
  corr = np.abs(x.T @ x)
  np.fill_diagonal(corr, 0.0)
  return corr


def mean_abs_correlation(codes: np.ndarray, bits: int) -> float:
  """Mean |correlation| over the bits(bits - 1)/2 pairs of the leading `bits` bits."""
  corr = bit_correlation(np.asarray(codes)[:, :bits])
  return float(corr[np.triu_indices(bits, 1)].mean()) if bits > 1 else 0.0


def saturated_fraction(relaxed: np.ndarray, threshold: float = SATURATION) -> float:
  """relaxed codes tanh(beta * z) [N, K] -> the fraction of units with |h| > threshold."""
  return float(np.mean(np.abs(np.asarray(relaxed, np.float64)) > threshold))


def code_diagnostics(codes: np.ndarray, prefixes: Sequence[int],
                     relaxed: np.ndarray | None = None) -> dict:
  """The three views of one modality's codes [N, K], for each leading prefix length (<= K).

  Returns {"balance": {bits: mean |bit mean|}, "dead_bits": {bits: bits with |mean| > 0.9},
  "correlation": {bits: mean |correlation|}, "saturated": fraction (only with `relaxed` [N, K])}
  (prefix lengths as strings: the dict goes into JSON)."""
  codes = np.asarray(codes, np.float32)
  k = codes.shape[1]
  lengths = sorted({b for b in prefixes if b <= k} | {k})
  balance = np.abs(bit_balance(codes))
  out = {"balance": {str(b): float(balance[:b].mean()) for b in lengths},
         "dead_bits": {str(b): int((balance[:b] > DEAD_BALANCE).sum()) for b in lengths},
         "correlation": {str(b): mean_abs_correlation(codes, b) for b in lengths}}
  if relaxed is not None:
    out["saturated"] = saturated_fraction(relaxed)
  return out


def summary(diag: dict) -> str:
  """One line per modality: balance, correlation per prefix, saturation."""
  lines = []
  for modality, d in diag.items():
    if not isinstance(d, dict) or "balance" not in d:
      continue
    per = ", ".join(f"{b} bits: |mean| {d['balance'][b]:.3f}, |corr| {d['correlation'][b]:.3f}, "
                    f"dead {d['dead_bits'][b]}" for b in d["balance"])
    sat = f"; saturated {100 * d['saturated']:.1f}%" if "saturated" in d else ""
    lines.append(f"{modality} codes: {per}{sat}")
  return "\n".join(lines)
