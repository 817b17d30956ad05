"""What every data loader returns: train arrays, evaluation splits, and the run's tokenizer.

Evaluation splits are flattened to one row per caption with the index of its image (the layout the
recall metrics take). The loaders (rsjax/data/annotated.py, prepared.py, synthetic.py) fill these;
rsjax/data/datasets.py picks the loader by config.data.name.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from rsjax.data.tokenizers import SentencePieceTokenizer


@dataclasses.dataclass
class EvalSplit:
  images: np.ndarray          # [M, H, W, 3] uint8
  tokens: np.ndarray          # [T, L] int32, one row per caption
  text_to_image: np.ndarray   # [T] int32, image index of each caption
  captions: list[str]         # [T]
  # Per-caption labels, each [T] (RS-Synth v2: "level" for multiscale, "role" / "distractor" /
  # "count" for small_objects; see rs_synth.caption_labels). Empty for plain splits.
  labels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PairSplit:
  """Image pairs with change captions (RS-Synth v2 temporal), for a pair encoder."""
  before: np.ndarray          # [P, H, W, 3] uint8
  after: np.ndarray           # [P, H, W, 3] uint8
  tokens: np.ndarray          # [T, L] int32, one row per caption
  text_to_pair: np.ndarray    # [T] int32, pair index of each caption
  captions: list[str]         # [T]
  changed: np.ndarray         # [P] bool
  change: list[str]           # [P] change type ("none", "buildings_added", ...)
  records: list[dict]         # [P] full records (region, counts, ...)


@dataclasses.dataclass
class RetrievalData:
  train_images: np.ndarray    # [N, H, W, 3] uint8 (a change set: date sequences [N, T, H, W, 3])
  train_tokens: np.ndarray    # [N, C, L] int32, C captions per image (padding rows all 0)
  eval_splits: dict[str, EvalSplit]
  tokenizer: SentencePieceTokenizer  # or a ClipTokenizer (the same encode / decode)
  pair_splits: dict[str, PairSplit] = dataclasses.field(default_factory=dict)
  # Label-only sets (RSSCN7, class folders): the class of each train image [N] int32, indexing
  # class_names; eval splits then carry labels["scene"] per caption. None / () otherwise.
  train_labels: np.ndarray | None = None
  class_names: tuple[str, ...] = ()
  train_dihedral: bool = False  # random flips / quarter turns of the in-memory train images
  # Further per-example train arrays, each [N, ...], that reach the batch under their name (a
  # change set's "changed" [N] bool for the change / no-change head).
  train_extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class StreamingRetrievalData(RetrievalData):
  """RetrievalData whose train split streams: train_images / train_tokens are empty and
  `train_iterator(global_batch, seed, process_index, process_count)` makes the batches."""
  make_iterator: Callable | None = None

  def train_iterator(self, global_batch: int, seed: int, process_index: int = 0,
                     process_count: int = 1):
    return self.make_iterator(global_batch, seed, process_index, process_count)
