"""Tokenizers: SentencePiece models trained on a data set's captions.

Ids follow one convention in all of rsjax: 0 = padding, and every encoded caption ends with the
end-of-text id, which the text tower pools.
"""

from __future__ import annotations

import io
import os
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from rsjax.atomic import write_bytes

PAD, UNK, BOS, EOS = 0, 1, 2, 3


def train_sentencepiece(captions: Iterable[str], path: str | os.PathLike, vocab_size: int = 512,
                        model_type: str = "bpe") -> str:
  """Trains a SentencePiece model on `captions` and writes it to `path` atomically; returns the path.

  BPE by default: on a small caption vocabulary it keeps whole words as pieces, where a unigram
  model fragments them ("th re e") and doubles caption lengths. `hard_vocab_limit=False` lets a small
  corpus end below `vocab_size`.
  """
  path = os.fspath(path)
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(list(captions)), model_writer=model, vocab_size=vocab_size,
      model_type=model_type, pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
      hard_vocab_limit=False, character_coverage=1.0, num_threads=os.cpu_count() or 1,
      minloglevel=2)
  write_bytes(path, model.getvalue())
  return path


class SentencePieceTokenizer:
  """Wraps a SentencePiece model: texts -> int32 ids [N, length], end-of-text kept on truncation."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    self._sp = spm.SentencePieceProcessor(model_file=self.path)

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, texts: Sequence[str], length: int) -> np.ndarray:
    """[N] texts -> [N, length] int32; longer texts are cut, keeping the end-of-text id last."""
    return self.encode_counting_cuts(texts, length)[0]

  def encode_counting_cuts(self, texts: Sequence[str], length: int) -> tuple[np.ndarray, int]:
    """Like `encode`, and also returns how many texts were cut (so callers can warn)."""
    out, lengths = self.encode_with_lengths(texts, length)
    return out, int(sum(n > length - 1 for n in lengths))

  def encode_with_lengths(self, texts: Sequence[str], length: int) -> tuple[np.ndarray, list[int]]:
    """Like `encode`, and also each text's length in pieces before cutting (end-of-text not
    counted): a text was cut where that exceeds length - 1."""
    out = np.full((len(texts), length), PAD, np.int32)
    lengths = []
    for row, ids in enumerate(self._sp.encode(list(texts))):
      lengths.append(len(ids))
      ids = ids[: length - 1] + [EOS]
      out[row, : len(ids)] = ids
    return out, lengths

  def decode(self, ids: np.ndarray) -> list[str]:
    return [self._sp.decode([int(i) for i in row if i not in (PAD, EOS)]) for row in np.asarray(ids)]

  def words(self, ids: Sequence[int]) -> list[tuple[str, list[int]]]:
    """One row of ids [L] -> (word, its positions in the row) per word, in order; padding and
    end-of-text belong to no word. A piece starting with U+2581 (SentencePiece's space) starts one."""
    out: list[tuple[list[int], list[int]]] = []
    for pos, i in enumerate(int(i) for i in ids):
      if i in (PAD, BOS, EOS):
        continue
      if not out or self._sp.id_to_piece(i).startswith("\u2581"):
        out.append(([], []))
      out[-1][0].append(i)
      out[-1][1].append(pos)
    words = [(self._sp.decode(pieces).strip(), positions) for pieces, positions in out]
    return [(w, positions) for w, positions in words if w]
