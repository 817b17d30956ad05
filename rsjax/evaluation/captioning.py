"""Retrieval as captioning: each pair's top-ranked caption, scored against the pair's own
captions with BLEU-4 and CIDEr-D, so change retrieval can be set beside the change-captioning
literature (LEVIR-CC).

The candidates are the split's captions of the *other* pairs (leave-own-out: a pair's own
captions are its references, and retrieving one would score perfectly by construction); a text
that other pairs share ("no change") stays a candidate. Scores come from pycocoevalcap, the
COCO caption evaluation code (its `Cider` is CIDEr-D: clipped n-gram counts and a length
penalty); texts are lower-cased with punctuation removed in place of its Java PTB tokenizer.
Both are reported x100, as papers do.
"""

from __future__ import annotations

import re

import numpy as np

from rsjax.errors import InputError

_PUNCTUATION = re.compile(r"[^\w\s]")


def normalize(text: str) -> str:
  """Lower case, punctuation removed, single spaces: 'A road, built.' -> 'a road built'."""
  return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def retrieved_captions(pair_emb: np.ndarray, text_emb: np.ndarray, captions: list[str],
                       text_to_pair: np.ndarray) -> list[str]:
  """[P] the best-scoring caption of each pair among the other pairs' captions (ties: the lower
  index). pair_emb [P, E], text_emb [T, E], captions [T], text_to_pair [T]."""
  sim = np.asarray(pair_emb, np.float32) @ np.asarray(text_emb, np.float32).T  # [P, T]
  own = np.asarray(text_to_pair)[None, :] == np.arange(len(pair_emb))[:, None]
  best = np.where(own, -np.inf, sim).argmax(1)
  return [captions[i] for i in best]


def caption_scores(hypotheses: list[str], references: list[list[str]]) -> dict[str, float]:
  """{"bleu4", "cider_d"} (x100) of one hypothesis per item against its references."""
  try:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
  except ImportError:
    raise InputError("BLEU-4 / CIDEr-D need pycocoevalcap: pip install 'rsjax[captions]'"
                     ) from None
  if len(hypotheses) != len(references) or not hypotheses:
    raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} reference sets")
  if any(not refs for refs in references):
    raise ValueError("every item needs at least one reference caption")
  hyp = {i: [normalize(h)] for i, h in enumerate(hypotheses)}
  refs = {i: [normalize(r) for r in rs] for i, rs in enumerate(references)}
  bleu, _ = Bleu(4).compute_score(refs, hyp, verbose=0)
  cider, _ = Cider().compute_score(refs, hyp)
  return {"bleu4": float(100 * bleu[3]), "cider_d": float(100 * cider)}


def pair_references(captions: list[str], text_to_pair: np.ndarray, num_pairs: int
                    ) -> list[list[str]]:
  """[P] the captions of each pair."""
  refs: list[list[str]] = [[] for _ in range(num_pairs)]
  for text, pair in zip(captions, np.asarray(text_to_pair)):
    refs[int(pair)].append(text)
  return refs
