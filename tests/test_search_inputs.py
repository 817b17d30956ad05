"""Archive and class-folder reading for `rsjax index` and zero-shot evaluation."""

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
