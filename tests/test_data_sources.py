"""Annotation readers on the real annotation files of ../shared/data, and the in-memory loader."""

import collections
import json
import pathlib

import numpy as np
import pytest

from rsjax.config import load_config
from rsjax.data import records, sources
from rsjax.data.datasets import load_retrieval_data

REPO = pathlib.Path(__file__).resolve().parents[1]

# Per split: (train, val, test) images or pairs, as published and as counted in these files.
EXPECTED = {
    "ucm_captions": (1680, 210, 210),
    "sydney_captions": (497, 58, 58),
    "rsicd": (8734, 1094, 1093),
    "rsitmd": (3432, 859, 452),
    "levir_cc": (6815, 1333, 1929),
}


def _split_counts(recs):
  counts = collections.Counter(r.split for r in recs)
  return counts["train"], counts["val"], counts["test"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_annotation_sets_parse_with_official_counts(shared_data, name):
  """Every record has 5 captions, except three RSICD images whose official annotation holds one
  blank caption each (bridge_218 and two more): the blank is dropped, leaving 4."""
  folder = shared_data / "annotations_only" / name
  recs, bad = records.collect(sources.read_source("captions_jsonl", str(folder)),
                              check_files=False)
  assert len(bad) == 0
  assert _split_counts(recs) == EXPECTED[name]
  per_image = collections.Counter(len(r.captions) for r in recs)
  if name == "rsicd":
    assert per_image == {5: 10918, 4: 3}
  else:
    assert per_image == {5: sum(EXPECTED[name])}
  if name == "levir_cc":
    assert all(len(r.images) == 2 and r.changed in (True, False) for r in recs)
    assert sum(r.changed for r in recs) == 5038
  else:
    assert all(len(r.images) == 1 for r in recs)


@pytest.mark.parametrize("name,file", [("ucm_captions", "dataset_ucm_modified.json"),
                                       ("sydney_captions", "dataset_sydney_modified.json")])
def test_karpathy_json_matches_captions_jsonl(shared_data, name, file):
  """The Karpathy dataset.json (120343/modified revision) has the same images and splits, and
  its captions are the jsonl's `captions_corrected` field."""
  folder = shared_data / "annotations_only" / name
  karpathy, _ = records.collect(
      sources.read_source("karpathy", str(folder / "original" / file), str(folder / "imgs")),
      check_files=False)
  jsonl, _ = records.collect(sources.read_source("captions_jsonl", str(folder),
                                                 caption_field="captions_corrected"),
                             check_files=False)
  assert _split_counts(karpathy) == EXPECTED[name]
  by_image = {r.images[0]: r for r in jsonl}
  for r in karpathy:
    twin = by_image[r.images[0]]
    assert (r.split, r.captions) == (twin.split, twin.captions)


def test_levir_mci_token_files_match_captions_jsonl(shared_data):
  """The original LEVIR-MCI files (split lists + packed token files) give the same pairs,
  splits and captions as levir_cc/captions.jsonl."""
  folder = shared_data / "annotations_only" / "levir_cc"
  mci, _ = records.collect(sources.read_source("levir_mci", str(folder / "original"),
                                               str(folder)), check_files=False)
  jsonl, _ = records.collect(sources.read_source("captions_jsonl", str(folder)),
                             check_files=False)
  assert _split_counts(mci) == EXPECTED["levir_cc"]
  assert {(r.split, r.images, r.captions) for r in mci} == \
      {(r.split, r.images, r.captions) for r in jsonl}


def test_rsitmd_nwpu_levir_json_fixtures(tmp_path):
  """RSITMD, NWPU-Captions and LEVIR-CC JSON files are not in ../shared/data: these fixtures are
  written here in each format's published layout."""
  (tmp_path / "rsitmd.json").write_text(json.dumps({"images": [
      {"filename": "a.tif", "split": "train", "keywords": ["port", "boat"],
       "sentences": [{"raw": "boats in a port", "tokens": ["boats"]}]}]}))
  (rec,) = sources.read_source("rsitmd", str(tmp_path / "rsitmd.json"))
  assert rec.keywords == ("port", "boat") and rec.captions == ("boats in a port",)

  (tmp_path / "nwpu.json").write_text(json.dumps({"airport": [
      {"filename": "airport_001.jpg", "split": "val", "raw": "a", "raw_1": "b", "raw_2": "c",
       "raw_3": "d", "raw_4": "e", "imgid": 0}]}))
  (rec,) = sources.read_source("nwpu", str(tmp_path / "nwpu.json"))
  assert rec.label == "airport" and rec.split == "val" and rec.captions == tuple("abcde")
  assert rec.images[0].endswith("airport/airport_001.jpg")

  (tmp_path / "levir.json").write_text(json.dumps({"images": [
      {"filepath": "test", "filename": "test_000007.png", "split": "test", "changeflag": 1,
       "sentences": [{"raw": " a road is built ", "tokens": []}]}]}))
  (rec,) = sources.read_source("levir_cc", str(tmp_path / "levir.json"))
  assert rec.changed is True and rec.captions == ("a road is built",)
  assert rec.images == (str(tmp_path / "images/test/A/test_000007.png"),
                        str(tmp_path / "images/test/B/test_000007.png"))


def test_image_folder_labels_by_folder(shared_data):
  recs = list(sources.read_source("image_folder", str(shared_data / "rsscn7" / "images")))
  assert len(recs) == 2240
  assert collections.Counter(r.label for r in recs) == {
      d: 320 for d in ("aGrass", "bField", "cIndustry", "dRiverLake", "eForest", "fResident",
                       "gParking")}


def test_annotated_loader_reads_rsicd_samples(shared_data, tmp_path):
  """configs/annotated.py's default: 45 train and 8 test RSICD images, 5 captions each."""
  config = load_config(str(REPO / "configs" / "annotated.py"),
                       [f"data.path={shared_data / 'rsicd_samples'}", "data.image_size=32"])
  data = load_retrieval_data(config, str(tmp_path))
  assert data.train_images.shape == (45, 32, 32, 3) and data.train_images.dtype == np.uint8
  assert data.train_tokens.shape[:2] == (45, 5)
  assert sorted(data.eval_splits) == ["test"]
  test = data.eval_splits["test"]
  assert test.images.shape == (8, 32, 32, 3) and len(test.captions) == 40
  assert data.train_images.std() > 10  # real pixels, not a blank fill


def test_annotated_loader_streams_augmented_batches(shared_data, tmp_path):
  """data.stream=True: the train split comes from the grain pipeline (random crops, turns)."""
  config = load_config(str(REPO / "configs" / "annotated.py"),
                       [f"data.path={shared_data / 'rsicd_samples'}", "data.image_size=32",
                        "data.stream=True"])
  data = load_retrieval_data(config, str(tmp_path))
  assert data.train_images.shape[0] == 0  # nothing held in memory for training
  it = data.train_iterator(8, seed=0)
  first, second = next(it), next(it)
  assert first["image"].shape == (8, 32, 32, 3) and first["tokens"].shape == (8, 24)
  assert not np.array_equal(first["image"], second["image"])
  assert data.eval_splits["test"].images.shape == (8, 32, 32, 3)
