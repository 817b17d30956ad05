"""The `change` evaluator's metrics: relevance by caption text, subsets, no-change detection."""

import numpy as np
import pytest

from rsjax.evaluation import change
from rsjax.evaluation.recalls import retrieval_ranks
from rsjax.data.captions_grammar import CHANGE_TYPES

NONE, ADDED, ROAD = (CHANGE_TYPES.index(n) for n in ("none", "buildings_added", "road_built"))


def four_pairs():
  """Two unchanged pairs sharing "no change", two changed ones with captions of their own; each
  pair's embedding is its caption's (a model that got every pair right)."""
  captions = ["no change", "no change", "a house was built", "a road was built"]
  text_to_pair = np.array([0, 1, 2, 3])
  text_emb = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
  image_emb = text_emb.copy()
  changed = np.array([False, False, True, True])
  kind = np.array([NONE, NONE, ADDED, ROAD])
  return image_emb, text_emb, captions, text_to_pair, changed, kind


def test_a_shared_caption_matches_every_pair_that_has_it():
  image_emb, text_emb, captions, owner, changed, kind = four_pairs()
  out = change.change_metrics(image_emb, text_emb, captions, owner, changed, kind)
  assert out["recalls"]["all"]["mR"] == 100.0
  assert set(out["recalls"]) == {"all", "changed", "unchanged", "none", "buildings_added",
                                 "road_built"}
  # By pairing, the second "no change" caption ranks pair 0 first (a tie, lower index): a miss.
  _, t2i = retrieval_ranks(image_emb, text_emb, owner)
  assert t2i.tolist() == [0, 1, 0, 0]
  # A wrong change embedding costs only its own subsets.
  image_emb[3] = [0, 1, 0]  # the road pair looks like the house pair
  out = change.change_metrics(image_emb, text_emb, captions, owner, changed, kind)
  assert out["recalls"]["unchanged"]["mR"] == 100.0 and out["recalls"]["buildings_added"]["mR"] == 100.0
  assert out["recalls"]["road_built"]["i2t_r1"] == 0.0
  assert out["recalls"]["road_built"]["t2i_r1"] == 0.0 and out["recalls"]["road_built"]["t2i_r5"] == 100.0


def test_ranks_break_ties_by_index_and_count_queries_without_relevant_items():
  sim = np.array([[0.5, 0.5, 0.1], [0.2, 0.9, 0.9]])
  relevant = np.array([[False, True, False], [False, False, False]])
  assert change.ranks_by_relevance(sim, relevant).tolist() == [1, 3]


def test_no_change_detection():
  image_emb, text_emb, captions, owner, changed, kind = four_pairs()
  logits = np.array([-2.0, 0.5, 3.0, 1.0])  # pair 1 wrongly called changed
  d = change.change_metrics(image_emb, text_emb, captions, owner, changed, kind, logits)["detection"]
  assert d == pytest.approx({"accuracy": 75.0, "changed_recall": 100.0, "unchanged_recall": 50.0,
                             "balanced": 75.0})


def test_pair_labels_from_caption_labels():
  from rsjax.data.types import EvalSplit

  split = EvalSplit(images=np.zeros((2, 2, 4, 4, 3), np.uint8), tokens=np.zeros((3, 4), np.int32),
                    text_to_image=np.array([0, 0, 1]), captions=["a", "b", "no change"],
                    labels={"changed": np.array([1, 1, 0]), "change": np.array([ROAD, ROAD, NONE])})
  changed, kind = change.pair_labels(split)
  assert changed.tolist() == [True, False] and kind.tolist() == [ROAD, NONE]


def test_retrieval_as_captioning_leaves_the_pairs_own_captions_out():
  from rsjax.evaluation import captioning

  image_emb, text_emb, captions, owner, changed, kind = four_pairs()
  top = captioning.retrieved_captions(image_emb, text_emb, captions, owner)
  # An unchanged pair gets the other's "no change"; a changed pair cannot get its own caption.
  assert top[:2] == ["no change", "no change"]
  assert top[2] != "a house was built" and top[3] != "a road was built"
  out = change.change_metrics(image_emb, text_emb, captions, owner, changed, kind)["captioning"]
  assert set(out) == {"all", "changed", "unchanged"}
  # (Two-word captions have no 3- or 4-grams: BLEU-4 is ~0 even for an exact match.)
  assert all(0.0 <= v["bleu4"] < 1.0 and np.isfinite(v["cider_d"]) for v in out.values())


def test_caption_scores():
  from rsjax.evaluation import captioning

  assert captioning.normalize("Two  buildings, built!") == "two buildings built"
  refs = [["a road was built across the middle", "a new road crosses the middle"],
          ["two houses were built in the upper left", "houses appeared at the top left"]]
  same = captioning.caption_scores(["A road was built across the middle.",
                                    "two houses were built in the upper left"], refs)
  assert same["bleu4"] == pytest.approx(100.0, abs=1e-4) and same["cider_d"] > 100.0
  swapped = captioning.caption_scores(["two houses were built in the upper left",
                                       "a road was built across the middle"], refs)
  assert swapped["bleu4"] < 50.0 and swapped["cider_d"] < 0.5 * same["cider_d"]
  with pytest.raises(ValueError, match="at least one reference"):
    captioning.caption_scores(["x"], [[]])


def test_pair_codes_rank_by_hamming_distance_with_text_relevance():
  _, _, captions, owner, changed, kind = four_pairs()
  text = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [-1, -1, 1, 1], [-1, -1, -1, -1]], np.float32)
  pairs = np.array([[1, 1, 1, -1], [1, 1, 1, 1], [-1, -1, 1, -1], [1, -1, -1, -1]], np.float32)
  relevant = change.text_relevance(captions, owner, 4)
  out = change.subset_recalls(pairs, text, relevant, owner, change.change_subsets(changed, kind))
  # Hamming distances, pair x caption: pair 2 is 1 from its own caption and 1 from the road's (a
  # tie, broken by the lower index: its own), pair 3 is 1 from its own only.
  hamming = (4 - pairs @ text.T) / 2
  assert hamming[2].tolist() == [3, 3, 1, 1] and hamming[3].tolist() == [3, 3, 3, 1]
  assert out["all"]["i2t_r1"] == 100.0
  # The road caption is 1 from pair 2 and from pair 3: the tie goes to pair 2, a miss.
  assert out["all"]["t2i_r1"] == 75.0 and out["road_built"]["t2i_r1"] == 0.0
  pairs[3] = [1, 1, 1, 1]          # the road pair's code now equals "no change"
  out = change.subset_recalls(pairs, text, relevant, owner, change.change_subsets(changed, kind))
  assert out["road_built"]["i2t_r1"] == 0.0 and out["unchanged"]["i2t_r1"] == 100.0
