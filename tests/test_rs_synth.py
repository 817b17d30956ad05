"""RS-Synth: determinism, caption grammar and truth, small objects, and the on-disk cache."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from rsjax.data import captions_grammar as grammar
from rsjax.data import rs_synth

SMALL = rs_synth.SynthSpec(seed=3, num_train=40, num_val=8, num_test=16)


@pytest.fixture(scope="module")
def small_train():
  return rs_synth.generate_split(SMALL, "train", num_workers=2)


def _mentions(caption: str, words) -> bool:
  return any(re.search(rf"\b{re.escape(w)}\b", caption) for w in words)


# --- images ------------------------------------------------------------------------------------

def test_split_shapes_and_dtype(small_train):
  images, records = small_train
  assert images.shape == (40, 64, 64, 3) and images.dtype == np.uint8
  assert [r["index"] for r in records] == list(range(40))
  assert all(r["split"] == "train" for r in records)
  # Noise/jitter: no two images are identical, and images are not flat.
  flat = {img.tobytes() for img in images}
  assert len(flat) == len(images)
  assert images.reshape(40, -1).std(axis=1).min() > 3


def test_deterministic_and_subset_consistent(small_train):
  images, records = small_train
  again, records_again = rs_synth.generate_split(SMALL, "train", num_workers=1)
  assert images.tobytes() == again.tobytes()
  assert records == records_again
  for i in (0, 17, 39):
    img, rec = rs_synth.render_example(SMALL, "train", i)
    np.testing.assert_array_equal(img, images[i])
    assert rec == records[i]


def test_pool_without_fork_matches(monkeypatch):
  """With JAX imported, workers come from a fork server; the result must not change."""
  spec = rs_synth.SynthSpec(seed=5, num_val=24)
  serial = rs_synth.generate_split(spec, "val", num_workers=1)
  monkeypatch.setitem(sys.modules, "jax", sys.modules.get("jax", object()))
  pooled = rs_synth.generate_split(spec, "val", num_workers=2)
  assert serial[0].tobytes() == pooled[0].tobytes() and serial[1] == pooled[1]


def test_seeds_and_splits_differ():
  a, _ = rs_synth.render_example(SMALL, "train", 0)
  b, _ = rs_synth.render_example(rs_synth.SynthSpec(seed=4), "train", 0)
  c, _ = rs_synth.render_example(SMALL, "val", 0)
  assert a.tobytes() != b.tobytes() and a.tobytes() != c.tobytes()


@pytest.mark.parametrize("size", [32, 256])
def test_other_resolutions(size):
  spec = rs_synth.SynthSpec(image_size=size)
  for i in range(3):
    img, rec = rs_synth.render_example(spec, "test", i)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    for g in rec["groups"]:
      assert len(g["pixel_sizes"]) == g["count"] and min(g["pixel_sizes"]) >= 2


def test_record_structure(small_train):
  _, records = small_train
  for r in records:
    assert r["landcover"] in grammar.LANDCOVERS
    assert 1 <= len(r["groups"]) <= 2
    classes = [g["cls"] for g in r["groups"]]
    positions = [g["position"] for g in r["groups"]]
    assert len(set(classes)) == len(classes) and len(set(positions)) == len(positions)
    for g in r["groups"]:
      assert g["cls"] in grammar.CLASSES and g["size"] in grammar.SIZES
      assert g["position"] in grammar.POSITIONS and 1 <= g["count"] <= 4
      assert len(g["pixel_sizes"]) == len(g["boxes"]) == g["count"]
      if g["cls"] == "ship":
        assert g["context"] in ("water", "pond", "harbor")
        assert (g["context"] == "water") == (r["landcover"] == "water")


def test_objects_inside_cell_and_not_overlapping(small_train):
  _, records = small_train
  cell = 64 / 3
  for r in records:
    for g in r["groups"]:
      row, col = divmod(grammar.POSITIONS.index(g["position"]), 3)
      for x0, y0, x1, y1 in g["boxes"]:  # boxes are rounded outwards by up to 1 px
        assert col * cell - 1 <= x0 and x1 <= (col + 1) * cell + 1
        assert row * cell - 1 <= y0 and y1 <= (row + 1) * cell + 1
      boxes = g["boxes"]
      for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
          a, b = boxes[i], boxes[j]
          overlap_x = min(a[2], b[2]) - max(a[0], b[0])
          overlap_y = min(a[3], b[3]) - max(a[1], b[1])
          assert overlap_x <= 1 or overlap_y <= 1  # integer rounding may touch, never cover


# --- captions ----------------------------------------------------------------------------------

def test_captions_valid(small_train):
  _, records = small_train
  for r in records:
    caps = r["captions"]
    assert len(caps) == 5 and len(set(caps)) == 5 and all(caps)
    for c in caps:
      assert c == c.lower() and c == c.strip() and "  " not in c
      assert set(c.split()) <= grammar.VOCABULARY_V1, c
      assert any(_mentions(c, grammar.CLASS_WORDS[g["cls"]]) for g in r["groups"]), c
    lc_mentions = sum(_mentions(c, grammar.LANDCOVER_WORDS[r["landcover"]]) for c in caps)
    assert lc_mentions >= 3
    for g in r["groups"]:  # with two groups, both are described
      assert sum(_mentions(c, grammar.CLASS_WORDS[g["cls"]]) for c in caps) >= 2


def test_vocabulary_small():
  assert 50 < len(grammar.VOCABULARY) < 200
  assert all(re.fullmatch(r"[a-z]+", w) for w in grammar.VOCABULARY)


def _group(**kw) -> dict:
  base = {"cls": "plane", "count": 2, "size": "small", "position": "upper left",
          "context": "runway_beside", "color": None}
  return {**base, **kw}


COUNT_CHECK = {1: ("a", "an", "one", "single"), 2: ("two", "pair"), 3: ("three",), 4: ("four",)}


@pytest.mark.parametrize("count", [1, 2, 3, 4])
@pytest.mark.parametrize("position", grammar.POSITIONS)
def test_caption_truth(count, position):
  rng = np.random.default_rng(count * 10 + grammar.POSITIONS.index(position))
  g = _group(count=count, position=position, cls="car", context="road", size="medium")
  other_counts = {w for n, ws in COUNT_CHECK.items() if n != count for w in ws} - {"a", "an"}
  for fn in (grammar.detail_caption, grammar.count_caption, grammar.group_landcover_caption):
    for _ in range(5):
      c = fn(g, "urban", rng)
      words = c.split()
      assert grammar.POSITION_PHRASES[position] in c, c
      assert any(w in words for w in COUNT_CHECK[count]), c
      assert not other_counts & set(words), c
      assert ("cars" in words) == (count > 1), c
      assert "medium" in words, c
      if fn is not grammar.group_landcover_caption:  # that one names the relation only sometimes
        assert "on a road" in c, c
  other_positions = [p for p in grammar.POSITION_PHRASES.values()
                     if p != grammar.POSITION_PHRASES[position]]
  c = grammar.detail_caption(g, "urban", rng)
  assert not any(p in c for p in other_positions), c


def test_group_phrase_articles_and_synonyms():
  rng = np.random.default_rng(0)
  g = _group(count=1, size="small", cls="plane")
  phrases = {grammar.group_phrase(g, rng, size="none", synonyms=True) for _ in range(60)}
  assert any(p.startswith("an airplane") or p.startswith("an aircraft") for p in phrases)
  assert not any(re.search(r"\ba [aeiou]", p) for p in phrases), phrases
  syn = {grammar.group_phrase(g, rng, size="synonym") for _ in range(10)}
  assert syn <= {"a tiny plane", "one tiny plane", "a single tiny plane"}


def test_two_group_captions_cover_both():
  rng = np.random.default_rng(1)
  a = _group(cls="ship", count=3, size="medium", position="lower right", context="water")
  b = _group(cls="storage tank", count=1, size="large", position="top", context="none")
  for _ in range(20):
    caps = grammar.make_captions("water", [a, b], rng)
    assert len(set(caps)) == 5
    for g in (a, b):
      assert sum(_mentions(c, grammar.CLASS_WORDS[g["cls"]]) for c in caps) >= 2


def test_small_objects_are_small_and_captioned():
  spec = rs_synth.SynthSpec(seed=11)
  hits = 0
  n = 120
  for i in range(n):
    _, rec = rs_synth.render_example(spec, "test", i)
    for g in rec["groups"]:
      if g["size"] != "small":
        continue
      assert max(g["pixel_sizes"]) <= 8
      if any(_mentions(c, grammar.SIZE_WORDS["small"]) and _mentions(c, grammar.CLASS_WORDS[g["cls"]])
             for c in rec["captions"]):
        hits += 1
        break
  assert hits >= 0.2 * n


# --- cache -------------------------------------------------------------------------------------

def test_default_spec():
  spec = rs_synth.SynthSpec()
  assert spec.num_test >= 1000 and spec.image_size == 64 and spec.version == "v1"
  assert rs_synth.spec_hash(spec) != rs_synth.spec_hash(rs_synth.SynthSpec(seed=1))


def test_cache_roundtrip(tmp_path, monkeypatch, capsys):
  first = rs_synth.load_or_generate(SMALL, tmp_path, progress=True)
  assert "generated" in capsys.readouterr().err
  path = rs_synth.cache_path(SMALL, tmp_path)
  assert path.parent.parent == tmp_path and path.name.startswith("v1-")
  names = sorted(p.name for p in path.iterdir())
  assert names == sorted(["spec.json"] + [f"images_{s}.npy" for s in rs_synth.SPLITS]
                         + [f"captions_{s}.jsonl" for s in rs_synth.SPLITS])
  assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp dirs left

  def boom(*args, **kwargs):
    raise AssertionError("cache was not used")
  monkeypatch.setattr(rs_synth.cache, "generate_split", boom)
  second = rs_synth.load_or_generate(SMALL, tmp_path, progress=True)
  assert "loaded" in capsys.readouterr().err
  for split in rs_synth.SPLITS:
    assert first[split][0].shape[0] == SMALL.num_examples(split)
    np.testing.assert_array_equal(first[split][0], second[split][0])
    assert first[split][1] == second[split][1]


def test_cache_env_var_and_interrupted_generation(tmp_path, monkeypatch):
  monkeypatch.setenv("RSJAX_CACHE", str(tmp_path))
  assert rs_synth.cache_path(SMALL).parent.parent == tmp_path
  real = rs_synth.generate_split

  def fail_on_val(spec, split, num_workers=None, **kwargs):
    if split == "val":
      raise KeyboardInterrupt
    return real(spec, split, num_workers, **kwargs)
  monkeypatch.setattr(rs_synth.cache, "generate_split", fail_on_val)
  with pytest.raises(KeyboardInterrupt):
    rs_synth.load_or_generate(SMALL, progress=False)
  assert not any((tmp_path / "rs_synth").iterdir())  # neither a cache nor a temp dir
