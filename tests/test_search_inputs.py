"""Archive and class-folder reading for `rsjax index` and zero-shot evaluation; pairs."""

import os

import numpy as np
import pytest
from PIL import Image

from rsjax import search_inputs


def write_image(path, value):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((40, 40, 3), value, np.uint8)).save(path)


def test_class_folders_give_labels_in_sorted_class_order(tmp_path):
  for cls, n in (("river_lake", 2), ("forest", 3)):
    for i in range(n):
      write_image(tmp_path / cls / f"{i}.png", 10 * i + (100 if cls == "forest" else 0))
  (tmp_path / "forest" / "notes.txt").write_text("not an image")
  images, labels, names = search_inputs.labelled_images(str(tmp_path), size=16)
  assert names == ["forest", "river_lake"]
  np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1])
  assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8
  assert images[0, 0, 0, 0] == 100 and images[3, 0, 0, 0] == 0
  paths = search_inputs.list_images(str(tmp_path))
  assert [p.split("/")[-2:] for p in paths][:2] == [["forest", "0.png"], ["forest", "1.png"]]
  assert len(paths) == 5


def test_labelled_data_set_split_and_classnames(shared_data):
  images, labels, names = search_inputs.labelled_images(
      str(shared_data / "rsscn7"), size=24, split="val", limit=14)
  assert names == ["grass", "field", "industry", "riverlake", "forest", "resident", "parking"]
  assert images.shape == (14, 24, 24, 3)
  assert len(set(labels.tolist())) == 7  # the limit spreads over every class


def test_missing_and_corrupt_inputs_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="no image folder"):
    search_inputs.list_images(str(tmp_path / "absent"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no image files"):
    search_inputs.list_images(str(tmp_path / "empty"))
  bad = tmp_path / "bad.jpg"
  bad.write_bytes(b"\xff\xd8 not really a jpeg")
  with pytest.raises(ValueError, match="bad.jpg"):
    search_inputs.load_image(str(bad), 16)


def test_pairs_match_by_relative_name_and_lonely_dates_are_named(tmp_path):
  from rsjax.data import records

  for side in ("A", "B"):
    for name in ("x/1.png", "2.png"):
      write_image(tmp_path / side / name, 50)
  pairs = search_inputs.list_pairs(str(tmp_path / "A"), str(tmp_path / "B"))
  assert [(os.path.relpath(a, tmp_path), os.path.relpath(b, tmp_path)) for a, b in pairs] == [
      ("A/2.png", "B/2.png"), ("A/x/1.png", "B/x/1.png")]
  write_image(tmp_path / "A" / "3.png", 1)
  write_image(tmp_path / "B" / "4.png", 1)
  with pytest.raises(records.MissingImageError, match=r"pair 3.png: no after image .*and 1 more"):
    search_inputs.list_pairs(str(tmp_path / "A"), str(tmp_path / "B"))
  bad = records.BadRecords()
  assert len(search_inputs.list_pairs(str(tmp_path / "A"), str(tmp_path / "B"), bad)) == 2
  assert [w for w, _, _ in bad.items] == ["3.png", "4.png"]
  write_image(tmp_path / "C" / "9.png", 1)
  with pytest.raises(records.NoRecordsError, match="no image name is in both"):
    search_inputs.list_pairs(str(tmp_path / "C"), str(tmp_path / "B"), records.BadRecords())


def test_a_pair_loads_as_two_dates_and_sizes_must_agree(tmp_path):
  write_image(tmp_path / "a.png", 10)
  write_image(tmp_path / "b.png", 200)
  pair = search_inputs.load_entry((str(tmp_path / "a.png"), str(tmp_path / "b.png")), 16)
  assert pair.shape == (2, 16, 16, 3) and pair[0].max() == 10 and pair[1].min() == 200
  Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "c.png")
  from rsjax.data import records
  with pytest.raises(records.PairSizeError, match=r"the dates differ in size: before 40x40, "
                                                  r"after 40x20 px .*c.png"):
    search_inputs.load_pair((str(tmp_path / "a.png"), str(tmp_path / "c.png")), 16)
  bad = records.BadRecords()
  batches = list(search_inputs.batches([(str(tmp_path / "a.png"), str(tmp_path / "c.png"))], 16,
                                       4, bad))
  assert batches[0][0].shape == (0, 2, 16, 16, 3) and len(bad) == 1   # skipped, and listed
