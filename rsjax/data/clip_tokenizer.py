"""CLIP's byte-level BPE tokenizer, giving the same ids as OpenAI CLIP and open_clip, without torch.

A caption is cleaned as CLIP cleans it (ftfy text repair, HTML entities unescaped twice, whitespace
collapsed, lowercased), split into words by CLIP's pattern, each word's UTF-8 bytes mapped to
printable symbols and merged by the ranked BPE merges; the ids are framed as
[<start_of_text>, ..., <end_of_text>] and padded with 0 to the context length (77). A caption that
is too long is cut and its last id replaced by <end_of_text>, so the text tower always pools it.

The merges file (bpe_simple_vocab_16e6.txt.gz, MIT, OpenAI) is not copied into rsjax: `find_vocab`
takes it from $RSJAX_CLIP_VOCAB, or from an installed open_clip package (found without importing
it, so torch is not loaded), and `rsjax convert` copies it into each converted folder, whose
configs then use that copy. Note that id 0 is both the padding and the
symbol '!': the CLIP text tower pools the end-of-text id by position of the largest id
(`model.text.pool="argmax"`) and so never confuses the two.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import html
import importlib.util
import os
from typing import Sequence

import ftfy
import numpy as np

from rsjax.errors import ConfigError, InputError
import regex

VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
CONTEXT_LENGTH = 77
START, END = "<start_of_text>", "<end_of_text>"
# CLIP uses the first 49152 - 256 - 2 merges: 256 byte symbols (twice: plain and word-final), the
# merges and two special tokens make a vocabulary of 49408.
NUM_MERGES = 49152 - 256 - 2
PAD_ID = 0
# CLIP's word pattern: the special tokens, English contractions, runs of letters, single digits,
# runs of other non-space characters.
_WORDS = regex.compile(
    rf"{START}|{END}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+",
    regex.IGNORECASE)


@functools.lru_cache(maxsize=None)
def byte_symbols() -> dict[int, str]:
  """byte -> one printable unicode symbol: printable Latin-1 bytes stand for themselves, the other
  68 (controls, space, soft hyphen...) are moved to code points 256, 257, ... in byte order."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  table = {b: chr(b) for b in printable}  # insertion order = vocabulary order
  others = [b for b in range(256) if b not in table]
  table.update({b: chr(256 + n) for n, b in enumerate(others)})
  return table


def clean(text: str) -> str:
  """CLIP's 'lower' cleaning: repair mojibake, unescape HTML twice, collapse whitespace, lowercase."""
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return " ".join(text.split()).lower()


def file_sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def find_vocab() -> str:
  """Path of CLIP's merges file: $RSJAX_CLIP_VOCAB, else the copy an installed open_clip ships."""
  if os.environ.get("RSJAX_CLIP_VOCAB"):
    return os.environ["RSJAX_CLIP_VOCAB"]
  spec = importlib.util.find_spec("open_clip")  # locates the package without running it
  for folder in (spec.submodule_search_locations or []) if spec else []:
    if os.path.isfile(os.path.join(folder, VOCAB_NAME)):
      return os.path.join(folder, VOCAB_NAME)
  raise InputError(
      f"CLIP's BPE merges file {VOCAB_NAME} was not found: `pip install open_clip_torch` (which "
      "ships it), set RSJAX_CLIP_VOCAB to a copy, or point data.tokenizer_path at the copy in a "
      "folder made by `rsjax convert`")


class ClipTokenizer:
  """texts -> int32 ids [N, length] with CLIP's vocabulary (49408 ids; 49406 start, 49407 end)."""

  def __init__(self, vocab_path: str | None = None):
    vocab_path = vocab_path or find_vocab()
    if not os.path.isfile(vocab_path):
      raise InputError(f"CLIP BPE merges file not found: {vocab_path} (data.tokenizer_path or "
                       "RSJAX_CLIP_VOCAB); give the bpe_simple_vocab_16e6.txt.gz open_clip ships")
    self.path = vocab_path
    try:
      with gzip.open(vocab_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1:NUM_MERGES + 1]  # line 0 is a version header
    except (gzip.BadGzipFile, EOFError, UnicodeDecodeError) as e:
      raise InputError(f"{vocab_path}: not a gzip'd CLIP BPE merges file ({type(e).__name__}: "
                       f"{e}); give the bpe_simple_vocab_16e6.txt.gz open_clip ships") from None
    merges = [tuple(line.split()) for line in lines]
    bad = [i + 2 for i, m in enumerate(merges) if len(m) != 2]
    if bad or len(merges) != NUM_MERGES:
      raise InputError(f"{vocab_path}: not a CLIP BPE merges file ({len(merges)} merges read, "
                       f"malformed lines {bad[:5]}); give the bpe_simple_vocab_16e6.txt.gz "
                       "open_clip ships")
    symbols = list(byte_symbols().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [START, END]
    self._ids = {piece: i for i, piece in enumerate(vocab)}
    self._pieces = vocab
    self._rank = {m: r for r, m in enumerate(merges)}
    self._bytes = byte_symbols()
    self._from_symbol = {s: b for b, s in self._bytes.items()}
    self._cache: dict[str, tuple[int, ...]] = {START: (self._ids[START],), END: (self._ids[END],)}
    self.start_id, self.end_id = self._ids[START], self._ids[END]

  @property
  def vocab_size(self) -> int:
    return len(self._pieces)

  def _merge(self, word: str) -> tuple[int, ...]:
    """One word (already byte symbols) -> its BPE ids; the last symbol carries the '</w>' mark."""
    if word in self._cache:
      return self._cache[word]
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
      first, second = min(zip(parts, parts[1:]), key=lambda p: self._rank.get(p, NUM_MERGES))
      if (first, second) not in self._rank:  # no adjacent pair is a known merge
        break
      merged, i = [], 0
      while i < len(parts):  # merge every occurrence of the best pair, left to right
        if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
          merged.append(first + second)
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    ids = tuple(self._ids[p] for p in parts)
    self._cache[word] = ids
    return ids

  def encode_ids(self, text: str) -> list[int]:
    """One caption -> its BPE ids without start/end tokens or padding."""
    ids: list[int] = []
    for word in _WORDS.findall(clean(text)):
      ids.extend(self._merge("".join(self._bytes[b] for b in word.encode("utf-8"))))
    return ids

  def encode(self, texts: Sequence[str], length: int = CONTEXT_LENGTH) -> np.ndarray:
    """[N] texts -> [N, length] int32, end-of-text kept last when a caption is cut."""
    return self.encode_counting_cuts(texts, length)[0]

  def encode_counting_cuts(self, texts: Sequence[str], length: int = CONTEXT_LENGTH
                           ) -> tuple[np.ndarray, int]:
    """Like `encode`, and also returns how many texts were cut (so callers can warn)."""
    if length < 2:
      raise ConfigError(f"config key 'model.text.context_length': context length {length} leaves "
                        "no room for the start and end tokens (use >= 2)")
    out = np.full((len(texts), length), PAD_ID, np.int32)
    cut = 0
    for row, text in enumerate(texts):
      ids = [self.start_id, *self.encode_ids(text), self.end_id]
      if len(ids) > length:
        cut += 1
        ids = ids[:length - 1] + [self.end_id]
      out[row, :len(ids)] = ids
    return out, cut

  def decode(self, ids: np.ndarray) -> list[str]:
    """[N, L] ids -> texts (the ids between start and end; CLIP's cleaning is not undone)."""
    texts = []
    for row in np.atleast_2d(np.asarray(ids)):
      row = [int(i) for i in row]
      if row and row[0] == self.start_id:
        row = row[1:]
      if self.end_id in row:
        row = row[:row.index(self.end_id)]
      # '</w>' ends a word: split there, then turn each word's symbols back into UTF-8 bytes.
      words = "".join(self._pieces[i] for i in row).split("</w>")
      texts.append(" ".join(bytes(self._from_symbol[s] for s in w).decode("utf-8", errors="replace")
                            for w in words if w))
    return texts

  def words(self, ids: Sequence[int]) -> list[tuple[str, list[int]]]:
    """One row of ids [L] -> (word, its positions in the row) per word, in order; the start and
    end tokens and the padding after the end belong to no word. A piece ending in '</w>' ends one."""
    row = [int(i) for i in ids]
    end = row.index(self.end_id) if self.end_id in row else len(row)
    out: list[tuple[str, list[int]]] = []
    current: list[int] = []
    for pos in range(end):
      if row[pos] == self.start_id:
        continue
      current.append(pos)
      if self._pieces[row[pos]].endswith("</w>"):
        out.append((self.decode([[row[p] for p in current]])[0], current))
        current = []
    if current:  # a word cut by the context length
      out.append((self.decode([[row[p] for p in current]])[0], current))
    return out

  def spec(self) -> dict:
    """What a converted checkpoint records so that rsjax tokenizes as the original did."""
    return {"kind": "clip_bpe", "context_length": CONTEXT_LENGTH, "vocab_size": self.vocab_size,
            "vocab_sha256": file_sha256(self.path), "pad_id": PAD_ID, "start_id": self.start_id,
            "end_id": self.end_id}

