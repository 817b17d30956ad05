"""The SentencePiece model of a prepared data set, trained on its captions and stored beside it."""

from __future__ import annotations

import os

from rsjax.data.tokenizers import train_sentencepiece

FILENAME = "tokenizer.model"


def beside(prepared_dir: str) -> str:
  return os.path.join(prepared_dir, FILENAME)


def train_for_prepared(builder, prepared_dir: str, vocab_size: int, split: str = "train") -> str:
  """Trains on every caption of `split` of a prepared set; returns the model path."""
  if split not in builder.info.splits:
    raise ValueError(f"{prepared_dir}: no split {split!r} (has {sorted(builder.info.splits)})")
  source = builder.as_data_source(split)
  captions = [c.decode("utf-8") for i in range(len(source)) for c in source[i]["captions"]]
  if not captions:
    raise ValueError(f"{prepared_dir}: split {split!r} has no captions to train a tokenizer on")
  return train_sentencepiece(captions, beside(prepared_dir), vocab_size=vocab_size)
