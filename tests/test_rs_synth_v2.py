"""RS-Synth v2: v1 splits unchanged, and the challenge subsets' labels true to the pixels."""

from __future__ import annotations

import hashlib
import json
import re

import ml_collections
import numpy as np
import pytest

from rsjax.data import captions_grammar as grammar
from rsjax.data import rs_synth, synthetic

SPEC = rs_synth.ChallengeSpec(seed=7, num_examples=48)
THRESHOLD = 20       # grey levels: change residual above it; nuisance stays below ~14 (measured)
COUNT_WORDS = {1: ("a", "an", "one", "single"), 2: ("two", "pair"), 3: ("three",), 4: ("four",)}
NUMERALS = {"one", "single", "two", "pair", "three", "four"}
SIZE_WORDS = {w for ws in grammar.SIZE_WORDS.values() for w in ws}


@pytest.fixture(scope="module")
def subsets():
  return {name: rs_synth.generate_challenge(SPEC, name, num_workers=1)
          for name in rs_synth.CHALLENGES}


def _mentions(caption: str, words) -> bool:
  return any(re.search(rf"\b{re.escape(w)}\b", caption) for w in words)


def _positions_in(caption: str) -> set[str]:
  return {p for p, phrase in grammar.POSITION_PHRASES.items() if phrase in caption}


def _assert_count(caption: str, count: int) -> None:
  words = set(caption.split())
  assert words & set(COUNT_WORDS[count]), caption
  others = {w for n, ws in COUNT_WORDS.items() if n != count for w in ws} - {"a", "an"}
  assert not words & others, caption


# --- v1 is untouched ----------------------------------------------------------------------------

# sha256 of images.tobytes() + json.dumps(records, sort_keys=True) per split of SynthSpec(seed=3,
# num_train=40, num_val=8, num_test=16), taken from the v1 generator before v2 was added. The same
# check on the default spec's cached splits (10,000 / 500 / 1,000) matched byte for byte too.
V1_HASHES = {
    "train": "2556840e047f6ccf30320fd06cbdb1ac896a7ca5c1eed152daceb07e54de1ff5",
    "val": "869d659f0ed15dd2d9c5bda2b29aa9be9219647fb4746bbda3fae3925fd9c924",
    "test": "7dbc180493e3a7918e22ac0488d0bd1098b787ba5a15c2ea3180f9cfec920836",
}


@pytest.mark.parametrize("split", rs_synth.SPLITS)
def test_v1_splits_byte_identical(split):
  spec = rs_synth.SynthSpec(seed=3, num_train=40, num_val=8, num_test=16)
  images, records = rs_synth.generate_split(spec, split, num_workers=1)
  digest = hashlib.sha256(images.tobytes() + json.dumps(records, sort_keys=True).encode())
  assert digest.hexdigest() == V1_HASHES[split]


def test_v1_captions_keep_v1_vocabulary():
  assert grammar.VOCABULARY_V1 < grammar.VOCABULARY and len(grammar.VOCABULARY) < 200
  assert {"no", "built", "demolished", "change"} <= grammar.VOCABULARY - grammar.VOCABULARY_V1


# --- generation: counts, determinism, cache -----------------------------------------------------

def test_counts_and_shapes(subsets):
  n = SPEC.num_examples
  (ms, ms_recs), (so, so_recs), (tp, tp_recs) = (subsets[k] for k in rs_synth.CHALLENGES)
  assert ms["images"].shape == (n, 64, 64, 3) and len(ms_recs) == n
  assert so["images"].shape == (2 * n, 64, 64, 3) and len(so_recs) == 2 * n
  assert tp["before"].shape == tp["after"].shape == (n, 64, 64, 3) and len(tp_recs) == n
  for arrays in (ms, so, tp):
    assert all(a.dtype == np.uint8 for a in arrays.values())
  assert all(len(r["captions"]) == 4 for r in ms_recs)
  assert all(len(r["captions"]) == 2 for r in so_recs)
  assert all(len(r["captions"]) == 3 == len(set(r["captions"])) for r in tp_recs)
  assert [r["index"] for r in so_recs] == list(range(2 * n))
  assert [r["role"] for r in so_recs[:4]] == ["original", "distractor"] * 2


def test_deterministic_pooled_and_per_example(subsets):
  for name in rs_synth.CHALLENGES:
    arrays, records = subsets[name]
    again, records_again = rs_synth.generate_challenge(SPEC, name, num_workers=2)
    assert records == records_again
    for k in arrays:
      assert arrays[k].tobytes() == again[k].tobytes(), (name, k)
  img, rec = rs_synth.render_multiscale(SPEC, 5)
  np.testing.assert_array_equal(img, subsets["multiscale"][0]["images"][5])
  pair, recs = rs_synth.render_small_objects(SPEC, 5)
  np.testing.assert_array_equal(pair, subsets["small_objects"][0]["images"][10:12])
  before, after, rec = rs_synth.render_temporal(SPEC, 5)
  np.testing.assert_array_equal(after, subsets["temporal"][0]["after"][5])
  other = rs_synth.ChallengeSpec(seed=8, num_examples=4)
  assert rs_synth.render_multiscale(other, 5)[0].tobytes() != img.tobytes()
  # Own random streams: a challenge image is not a copy of the v1 image with the same index.
  v1 = rs_synth.render_example(rs_synth.SynthSpec(seed=7), "test", 5)[0]
  assert v1.tobytes() != img.tobytes()


def test_label_balance():
  spec = rs_synth.ChallengeSpec(seed=1, num_examples=160)
  _, temporal = rs_synth.generate_challenge(spec, "temporal", num_workers=1)
  kinds = [r["change"] for r in temporal]
  assert set(kinds) == set(grammar.CHANGE_TYPES)
  assert 0.15 < kinds.count("none") / len(kinds) < 0.35
  assert all(r["changed"] == (r["change"] != "none") for r in temporal)
  _, small = rs_synth.generate_challenge(spec, "small_objects", num_workers=1)
  kinds = [r["distractor"] for r in small[::2]]
  assert kinds.count("removed") > 30 and kinds.count("fewer") > 30


def test_challenge_cache(tmp_path, monkeypatch, capsys):
  spec = rs_synth.ChallengeSpec(num_examples=6)
  first = rs_synth.load_or_generate_challenges(spec, tmp_path, progress=True)
  assert "generated temporal" in capsys.readouterr().err
  path = rs_synth.challenge_cache_path(spec, tmp_path)
  assert path.name.startswith("v2-challenges-") and path.parent == tmp_path / "rs_synth"
  assert path != rs_synth.cache_path(rs_synth.SynthSpec(), tmp_path)
  assert sorted(p.name for p in path.iterdir()) == sorted(
      ["spec.json", "multiscale.jsonl", "multiscale_images.npy", "small_objects.jsonl",
       "small_objects_images.npy", "temporal.jsonl", "temporal_before.npy", "temporal_after.npy"])
  assert [p.name for p in path.parent.iterdir()] == [path.name]   # no temp dirs left

  def boom(*args, **kwargs):
    raise AssertionError("cache was not used")
  monkeypatch.setattr(rs_synth.cache, "generate_challenge", boom)
  second = rs_synth.load_or_generate_challenges(spec, tmp_path, progress=True)
  assert "loaded" in capsys.readouterr().err
  for name in rs_synth.CHALLENGES:
    assert first[name][1] == second[name][1]
    for k, v in first[name][0].items():
      np.testing.assert_array_equal(v, second[name][0][k])
  # A different spec is a different cache; an interrupted generation leaves nothing behind.
  monkeypatch.setattr(rs_synth.cache, "generate_challenge", lambda *a, **k: (_ for _ in ()).throw(
      KeyboardInterrupt()))
  with pytest.raises(KeyboardInterrupt):
    rs_synth.load_or_generate_challenges(rs_synth.ChallengeSpec(num_examples=7), tmp_path,
                                         progress=False)
  assert [p.name for p in path.parent.iterdir()] == [path.name]


# --- multi-scale: caption levels ----------------------------------------------------------------

def test_multiscale_levels_true(subsets):
  _, records = subsets["multiscale"]
  all_class_words = set().union(*grammar.CLASS_WORDS.values())
  for r in records:
    assert r["levels"] == ["scene", "scene", "object", "object"]
    assert r["caption_groups"][:2] == [-1, -1]
    classes = {g["cls"] for g in r["groups"]}
    for k, (cap, level) in enumerate(zip(r["captions"], r["levels"])):
      words = set(cap.split())
      if level == "scene":   # land cover, linear features, kinds of objects: no size/count/place
        assert _mentions(cap, grammar.LANDCOVER_WORDS[r["landcover"]]), cap
        assert not words & (SIZE_WORDS | NUMERALS) and not _positions_in(cap), cap
        named = {c for c in grammar.CLASSES if _mentions(cap, grammar.CLASS_WORDS[c])}
        assert named == (set() if k == 0 else classes), cap
        if k == 0:
          assert ("road" in words) == r["road"] and ("river" in words) == r["river"], cap
      else:                  # one group: its class, count, size and place, no other group
        g = r["groups"][r["caption_groups"][k]]
        assert _mentions(cap, grammar.CLASS_WORDS[g["cls"]]), cap
        assert not (words & all_class_words) - grammar.CLASS_WORDS[g["cls"]] - {"tank"}, cap
        assert g["size"] in words and _positions_in(cap) == {g["position"]}, cap
        _assert_count(cap, g["count"])
    assert set(r["caption_groups"][2:]) == set(range(len(r["groups"])))
  labels = rs_synth.caption_labels(records)
  assert labels["level"].shape == (4 * len(records),)
  assert (labels["level"] == "scene").sum() == (labels["level"] == "object").sum()
  assert labels["group"].tolist() == [g for r in records for g in r["caption_groups"]]


# --- small objects: the caption's truth hinges on objects of at most 8 pixels -------------------

@pytest.mark.parametrize("image_size", [64, 256])
def test_small_objects_pixels_and_truth(image_size, subsets):
  if image_size == 64:
    arrays, records = subsets["small_objects"]
  else:   # large tiles: v1's "small" would be up to 15 px here; the subset caps it at 8
    arrays, records = rs_synth.generate_challenge(
        rs_synth.ChallengeSpec(seed=2, image_size=256, num_examples=8), "small_objects", 1)
  for i in range(0, len(records), 2):
    orig, dist = records[i], records[i + 1]
    small, small_d = orig["groups"][0], dist["groups"][0]
    assert small["size"] == "small" and len(small["extents"]) == small["count"] >= 1
    assert max(small["extents"]) <= rs_synth.SMALL_MAX_PX and max(small["pixel_sizes"]) <= 8
    assert all(g["size"] in ("medium", "large") for g in orig["groups"][1:])
    assert orig["groups"][1:] == dist["groups"][1:]
    hidden = dist["hidden_boxes"]
    assert small_d["count"] == small["count"] - len(hidden) < small["count"]
    assert (small_d["count"] == 0) == (dist["distractor"] == "removed")
    assert small_d["boxes"] + hidden and sorted(small_d["boxes"] + hidden) == sorted(small["boxes"])
    # Pixels: the two images differ only around the missing objects, and each of them shows.
    diff = np.abs(arrays["images"][i].astype(np.int16) - arrays["images"][i + 1]).max(-1)
    near = np.zeros(diff.shape, bool)
    for x0, y0, x1, y1 in hidden:   # boxes are rounded outwards; +2 px for shadow and edge
      assert x1 - x0 <= 9 and y1 - y0 <= 9
      assert diff[max(0, y0):y1, max(0, x0):x1].max() >= 20
      near[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2] = True
    assert not diff[~near].any()
    # Captions: each states its own image's count of that class, so it is false of the partner.
    nouns = grammar.CLASS_WORDS[small["cls"]]
    for cap in orig["captions"]:
      assert _mentions(cap, nouns) and _positions_in(cap) == {small["position"]}, cap
      _assert_count(cap, small["count"])
    for cap in dist["captions"]:
      assert _mentions(cap, nouns) and _positions_in(cap) == {small["position"]}, cap
      if small_d["count"]:
        _assert_count(cap, small_d["count"])
      else:
        assert "no" in cap.split() and not set(cap.split()) & NUMERALS, cap
    assert not set(orig["captions"]) & set(dist["captions"])
  labels = rs_synth.caption_labels(records)
  assert labels["role"].tolist() == ["original", "original", "distractor", "distractor"] * (
      len(records) // 2)
  assert labels["count"].tolist() == [r["groups"][0]["count"] for r in records for _ in range(2)]


# --- temporal: changes where the captions say, nuisance elsewhere -------------------------------

def _change_residual(before: np.ndarray, after: np.ndarray) -> np.ndarray:
  """[H, W] largest per-channel |after - gain * before|, the gain (illumination) fitted per
  channel; 0 where either date is saturated (clipping breaks the linear model)."""
  b, a = before.astype(np.float64), after.astype(np.float64)
  ok = (np.minimum(b.min(-1), a.min(-1)) > 3) & (np.maximum(b.max(-1), a.max(-1)) < 252)
  out = np.zeros(before.shape[:2])
  for c in range(3):
    gain = np.median(a[..., c][ok] / np.maximum(b[..., c][ok], 1))
    out = np.maximum(out, np.abs(a[..., c] - gain * b[..., c]))
  return np.where(ok, out, 0)


def test_temporal_changes_true_to_pixels(subsets):
  arrays, records = subsets["temporal"]
  assert {r["change"] for r in records} == set(grammar.CHANGE_TYPES)
  size = arrays["before"].shape[1]
  yy, xx = np.mgrid[:size, :size] + 0.5
  dates = []
  for i, r in enumerate(records):
    res = _change_residual(arrays["before"][i], arrays["after"][i])
    assert np.abs(arrays["before"][i].astype(int) - arrays["after"][i]).max() > 0  # nuisance
    if not r["changed"]:
      assert (res <= THRESHOLD).all(), (i, res.max())
      assert set(r["captions"]) <= set(grammar.CHANGE_TEMPLATES["none"])
      continue
    x0, y0, x1, y1 = r["region_box"]
    margin = 1.0
    if r["buildings"]:   # shadows fall up to 0.2 L outside the building
      margin += 0.2 * max(r["buildings"]["pixel_sizes"]) + 1
    inside = (xx > x0 - margin) & (xx < x1 + margin) & (yy > y0 - margin) & (yy < y1 + margin)
    assert (res[~inside] <= THRESHOLD).all(), (i, r["change"], res[~inside].max())
    assert (res[inside] > THRESHOLD).sum() >= 3, (i, r["change"])
    for g in r["groups"]:   # the unchanged group stays out of the changed area
      for bx0, by0, bx1, by1 in g["boxes"]:
        assert bx1 <= x0 + 1 or bx0 >= x1 - 1 or by1 <= y0 + 1 or by0 >= y1 - 1
    for cap in r["captions"]:
      assert _positions_in(cap) == {r["region"]}, cap
      if r["change"] == "road_built":
        assert "road" in cap.split(), cap
        assert grammar.ROAD_DIRECTIONS[r["road"]["orientation"]] in cap, cap
      else:
        b = r["buildings"]
        assert _mentions(cap, grammar.CLASS_WORDS["building"]), cap
        _assert_count(cap, b["count"])
        verbs = {"buildings_added": {"built", "constructed", "added"},
                 "buildings_removed": {"demolished", "removed", "torn"}}[r["change"]]
        assert set(cap.split()) & verbs, cap
        # Drawn where stated, on the date the caption says.
        cx0, cy0, cx1, cy1 = r["region_box"]
        assert all(cx0 - 1 <= bx0 and bx1 <= cx1 + 1 and cy0 - 1 <= by0 and by1 <= cy1 + 1
                   for bx0, by0, bx1, by1 in b["boxes"])
        if r["landcover"] in ("forest", "grassland"):  # green ground; roofs and shadows are not
          dates.append((r["change"], *(_greenness(arrays[d][i], b["boxes"])
                                       for d in ("before", "after"))))
  assert len(dates) >= 3, dates   # (change, before, after): less green where buildings stand
  assert all((after < before) == (c == "buildings_added") for c, before, after in dates), dates


def _greenness(image: np.ndarray, boxes) -> float:
  """Mean green minus red over the boxes."""
  px = np.concatenate([image[y0:y1, x0:x1].reshape(-1, 3) for x0, y0, x1, y1 in boxes])
  px = px.astype(np.float64)
  return float((px[:, 1] - px[:, 0]).mean())


def test_temporal_region_boxes(subsets):
  size = SPEC.image_size
  for r in subsets["temporal"][1]:
    if r["change"] == "road_built":
      x0, y0, x1, y1 = r["region_box"]
      across = (y1 - y0) if r["road"]["orientation"] == "horizontal" else (x1 - x0)
      along = (x1 - x0) if r["road"]["orientation"] == "horizontal" else (y1 - y0)
      assert along == size and abs(across - size / 3) < 1e-3
    elif r["change"] != "none":
      row, col = divmod(grammar.POSITIONS.index(r["region"]), 3)
      cell = [col * size / 3, row * size / 3, (col + 1) * size / 3, (row + 1) * size / 3]
      assert r["region_box"] == pytest.approx(cell, abs=1e-3)
    else:
      assert r["region"] is None and r["region_box"] is None


# --- exposure through synthetic.load_rs_synth ---------------------------------------------------

def _data_config(challenges: bool, cache_dir) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name="rs_synth", seed=3, image_size=32, num_train=64, num_val=8, num_test=16,
      cache_dir=str(cache_dir), challenges=challenges, challenge_size=10))


def test_load_rs_synth_challenges(tmp_path):
  plain = synthetic.load_rs_synth(_data_config(False, tmp_path), str(tmp_path / "a"), 24, 200,
                                  progress=False)
  assert set(plain.eval_splits) == {"val", "test"} and plain.pair_splits == {}
  assert not (tmp_path / "rs_synth" / rs_synth.challenge_cache_path(
      rs_synth.ChallengeSpec(seed=3, image_size=32, num_examples=10)).name).exists()

  data = synthetic.load_rs_synth(_data_config(True, tmp_path), str(tmp_path / "b"), 24, 200,
                                 progress=False)
  assert set(data.eval_splits) == {"val", "test", "multiscale", "small_objects"}
  np.testing.assert_array_equal(data.eval_splits["test"].images, plain.eval_splits["test"].images)
  ms, so = data.eval_splits["multiscale"], data.eval_splits["small_objects"]
  assert ms.images.shape == (10, 32, 32, 3) and ms.tokens.shape == (40, 24)
  assert ms.text_to_image.tolist() == [i for i in range(10) for _ in range(4)]
  assert ms.labels["level"].tolist() == ["scene", "scene", "object", "object"] * 10
  assert so.images.shape == (20, 32, 32, 3) and so.tokens.shape == (40, 24)
  assert so.labels["role"].shape == (40,)
  pairs = data.pair_splits["temporal"]
  assert pairs.before.shape == pairs.after.shape == (10, 32, 32, 3)
  assert pairs.tokens.shape == (30, 24) and pairs.text_to_pair.tolist() == [
      i for i in range(10) for _ in range(3)]
  assert pairs.changed.dtype == bool and pairs.changed.tolist() == [
      c != "none" for c in pairs.change]
  assert pairs.captions[0] == pairs.records[0]["captions"][0]


def test_bad_arguments_named():
  with pytest.raises(ValueError, match="image_size"):
    rs_synth.ChallengeSpec(image_size=8)
  with pytest.raises(ValueError, match="num_examples"):
    rs_synth.ChallengeSpec(num_examples=-1)
  with pytest.raises(ValueError, match="unknown RS-Synth challenge subset 'temporals'"):
    rs_synth.generate_challenge(SPEC, "temporals")
  with pytest.raises(ValueError, match="unknown change type"):
    grammar.change_captions("flooded", "urban", np.random.default_rng(0))
  with pytest.raises(ValueError, match="caption_labels"):
    rs_synth.caption_labels([{"subset": "temporal"}])
