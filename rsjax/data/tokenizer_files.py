"""The SentencePiece model of a prepared data set, trained on its captions and stored beside it."""

from __future__ import annotations

import os

from rsjax.data.tokenizers import train_sentencepiece
from rsjax.errors import InputError

FILENAME = "tokenizer.model"


def beside(prepared_dir: str) -> str:
  return os.path.join(prepared_dir, FILENAME)


def train_for_prepared(builder, prepared_dir: str, vocab_size: int, split: str = "train") -> str:
  """Trains on every caption of `split` of a prepared set; returns the model path."""
  if vocab_size < 1:
    raise InputError(f"--vocab-size must be a positive number of pieces (e.g. 8000), got "
                     f"{vocab_size}")
  if split not in builder.info.splits:
    raise InputError(f"{prepared_dir}: no split {split!r} (has {sorted(builder.info.splits)}); "
                     "choose one with --split")
  source = builder.as_data_source(split)
  captions = [c.decode("utf-8") for i in range(len(source)) for c in source[i]["captions"]]
  if not captions:
    raise InputError(f"{prepared_dir}: split {split!r} has no captions to train a tokenizer on; "
                     "choose another with --split")
  try:
    return train_sentencepiece(captions, beside(prepared_dir), vocab_size=vocab_size)
  except RuntimeError as e:  # SentencePiece's refusals, e.g. fewer pieces than characters
    detail = " ".join(str(e).split())
    raise InputError(f"SentencePiece cannot train a tokenizer of --vocab-size {vocab_size} on "
                     f"split {split!r} of {prepared_dir}: {detail}") from None
