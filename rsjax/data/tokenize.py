"""Captions -> token ids in the layouts the loaders return, and the choice of the run's tokenizer.

Shared by every loader (rsjax/data/annotated.py, prepared.py, synthetic.py) and by the streamed
pipeline's per-record tokenizing (rsjax/data/stream.py), so all of them tokenize identically.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from rsjax import parallel
from rsjax.data.tokenizers import SentencePieceTokenizer, train_sentencepiece
from rsjax.data.types import EvalSplit


def encode_flat(tokenizer, captions: list[list[str]], length: int):
  """Captions per image -> (ids [T, L], image index of each caption [T], flat captions [T]).

  Warns when captions are longer than `length` tokens and had to be cut."""
  flat = [t for caps in captions for t in caps]
  owner = np.asarray([i for i, caps in enumerate(captions) for _ in caps], np.int32)
  ids, cut = tokenizer.encode_counting_cuts(flat, length)
  if cut:
    print(f"rsjax: warning: {cut} of {len(flat)} captions are longer than "
          f"model.text.context_length={length} tokens and were cut", flush=True)
  return ids, owner, flat


def tokenize_per_image(tokenizer, captions: list[list[str]], length: int) -> np.ndarray:
  """Captions per image -> [N, C, L] with C the largest caption count; missing rows are padding."""
  ids, owner, _ = encode_flat(tokenizer, captions, length)
  out = np.zeros((len(captions), max(len(c) for c in captions), length), np.int32)
  slot = np.concatenate([np.arange(len(c)) for c in captions]).astype(np.int64)
  out[owner, slot] = ids
  return out


def eval_split(tokenizer, images: np.ndarray, captions: list[list[str]], length: int) -> EvalSplit:
  """Images [M, H, W, 3] and their captions -> an EvalSplit, one token row per caption."""
  ids, owner, flat = encode_flat(tokenizer, captions, length)
  return EvalSplit(images, ids, owner, flat)


def tokenizer_for(captions: list[str], workdir: str, vocab_size: int,
                  model_path: str = "") -> SentencePieceTokenizer:
  """The run's SentencePiece model: `model_path` when given (e.g. the one `rsjax data tokenizer`
  stored beside a prepared set), else trained once on the training captions and kept in the
  workdir so that resumed runs and later `rsjax eval` calls tokenize identically.
  "clip_bpe" (or a CLIP merges file, *.txt.gz) selects CLIP's BPE, for converted CLIP weights."""
  if model_path == "clip_bpe" or model_path.endswith(".txt.gz"):
    from rsjax.data.clip_tokenizer import ClipTokenizer  # ftfy / regex only for CLIP runs
    return ClipTokenizer(None if model_path == "clip_bpe" else model_path)
  if model_path:
    if not os.path.isfile(model_path):
      raise FileNotFoundError(f"config key 'data.tokenizer_path': no tokenizer model at {model_path}")
    return SentencePieceTokenizer(model_path)
  path = os.path.join(workdir, "tokenizer.model")
  # One process trains it (multi-threaded training need not give every process the same pieces)
  # and the others read what it wrote; every process passes the barrier, file or not.
  if jax.process_index() == 0 and not os.path.exists(path):
    train_sentencepiece(captions, path, vocab_size=vocab_size)
  parallel.barrier("rsjax: tokenizer.model written")
  return SentencePieceTokenizer(path)
