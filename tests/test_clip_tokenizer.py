"""rsjax's CLIP BPE tokenizer against open_clip's: identical ids on every caption of the shared
annotation sets, end-of-text kept on truncation, the bundled merges file byte-identical."""

import json
import pathlib

import numpy as np
import pytest

from rsjax.data.clip_tokenizer import VOCAB_SHA256, ClipTokenizer, file_sha256, find_vocab
from rsjax.data.tokenize import tokenizer_for
from torchvision_shim import import_open_clip

SETS = ("ucm_captions", "sydney_captions", "rsicd", "rsitmd", "levir_cc")


@pytest.fixture(scope="module")
def tokenizers():
  open_clip = import_open_clip()
  return ClipTokenizer(), open_clip.get_tokenizer("ViT-B-32")


def _captions(folder: pathlib.Path) -> list[str]:
  out = []
  with open(folder / "captions.jsonl", encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      out += row["captions"] + row.get("captions_corrected", [])
  return out


@pytest.mark.parametrize("name", SETS)
def test_ids_match_open_clip_on_every_caption(shared_data, tokenizers, name):
  ours, theirs = tokenizers
  captions = _captions(shared_data / "annotations_only" / name)
  assert len(captions) > 3000
  expected = theirs(captions).numpy()
  got = ours.encode(captions)
  assert got.dtype == np.int32 and got.shape == expected.shape == (len(captions), 77)
  differ = np.flatnonzero((got != expected).any(1))
  assert not len(differ), [captions[i] for i in differ[:5]]


def test_edge_cases_match_open_clip(tokenizers):
  ours, theirs = tokenizers
  texts = ["Hello World!", "  many   PLANES\tare parked ", "a ca&amp;amp;t", "naïve café 東京 😀",
           "it's 12.5% of 2024's area", "", "!!! ...", "word " * 100, "<end_of_text> x"]
  np.testing.assert_array_equal(ours.encode(texts), theirs(texts).numpy())
  np.testing.assert_array_equal(ours.encode(texts, 20), theirs(texts, context_length=20).numpy())


def test_truncation_keeps_end_of_text_and_counts_cuts(tokenizers):
  ours, _ = tokenizers
  ids, cut = ours.encode_counting_cuts(["storage tanks " * 50, "a river"], 16)
  assert cut == 1
  assert ids[0, 0] == ours.start_id and ids[0, -1] == ours.end_id
  assert ids[1, 0] == ours.start_id and (ids[1] == ours.end_id).sum() == 1


def test_decode_round_trip(tokenizers):
  ours, _ = tokenizers
  texts = ["many planes are parked near the terminal", "two white storage tanks"]
  assert ours.decode(ours.encode(texts)) == texts


def test_bundled_merges_are_openais_and_open_clips(tokenizers):
  open_clip = import_open_clip()
  from open_clip.tokenizer import default_bpe

  assert file_sha256(find_vocab()) == VOCAB_SHA256 == file_sha256(default_bpe())
  assert tokenizers[0].vocab_size == 49408


def test_tokenizer_path_clip_bpe_selects_it(tmp_path):
  tok = tokenizer_for(["a caption"], str(tmp_path), 49408, "clip_bpe")
  assert isinstance(tok, ClipTokenizer)
  assert not list(tmp_path.iterdir())  # nothing trained or written
