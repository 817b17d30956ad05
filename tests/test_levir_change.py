"""LEVIR-CC as a change set (data.name="levir_cc_change"): RS-Synth pairs written in the LEVIR-CC
layout (rsjax/data/levir_layout.py) read back unchanged, trained on by the change encoder and
evaluated; and the bad pairs (a date missing, dates of different sizes, no captions, every pair
bad, a split missing), each named."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from rsjax.data import levir_change, records
from rsjax.data.levir_layout import caption_tokens, write_levir_cc
from rsjax.errors import ConfigError

CONFIG = "configs/levir_cc_change.py"
ANNOTATION = "LevirCCcaptions.json"


@pytest.fixture(scope="module")
def levir(tmp_path_factory):
  """(folder in the LEVIR-CC layout, the RS-Synth splits written there): 16 / 8 / 8 pairs, 32 px."""
  from rsjax.data.rs_synth.temporal_splits import TemporalSplitSpec, load_or_generate_temporal

  tmp = tmp_path_factory.mktemp("levir")
  spec = TemporalSplitSpec(seed=0, image_size=32, num_train=16, num_val=8, num_test=8)
  splits = load_or_generate_temporal(spec, str(tmp / "cache"), progress=False)
  out = str(tmp / "levir")
  assert write_levir_cc(out, splits) == {"train": 16, "val": 8, "test": 8}
  return out, splits


def data_config(path, *overrides):
  from rsjax.config import load_config
  return load_config(f"{CONFIG}:path={path}", ["data.image_size=32", *overrides]).data


def copy_of(levir, tmp_path):
  """A copy of the written set to break (the module's own stays intact)."""
  return shutil.copytree(levir[0], str(tmp_path / "levir"))


def edit_annotation(folder, edit):
  path = os.path.join(folder, ANNOTATION)
  with open(path) as f:
    data = json.load(f)
  edit(data["images"])
  with open(path, "w") as f:
    json.dump(data, f)


def test_the_levir_cc_layout_reads_back_as_written(levir, tmp_path):
  folder, splits = levir
  data = levir_change.load_levir_cc_change(data_config(folder), str(tmp_path), 24, 512,
                                           progress=False)
  seqs, recs = splits["train"]
  assert data.train_images.shape == (16, 2, 32, 32, 3) and data.train_images.dtype == np.uint8
  np.testing.assert_array_equal(data.train_images, seqs)
  np.testing.assert_array_equal(data.train_extras["changed"], [r["changed"] for r in recs])
  assert set(data.eval_splits) == {"val", "test"}
  for name in ("val", "test"):
    split, (seqs, recs) = data.eval_splits[name], splits[name]
    np.testing.assert_array_equal(split.images, seqs)
    assert split.captions == [c for r in recs for c in r["captions"]]
    flags = np.asarray([recs[p]["changed"] for p in split.text_to_image])
    np.testing.assert_array_equal(split.labels["changed"], flags)
    # LEVIR-CC has no change types: 0 ("none") unchanged, UNKNOWN_CHANGE changed
    np.testing.assert_array_equal(split.labels["change"],
                                  np.where(flags, levir_change.UNKNOWN_CHANGE, 0))


def test_levir_mci_tokens_read_back_with_change_told_from_the_captions(levir, tmp_path):
  folder, splits = levir
  data = levir_change.load_levir_cc_change(
      data_config(os.path.join(folder, "levir_mci"), "data.format=levir_mci",
                  f"data.image_root={folder}"), str(tmp_path), 24, 512, progress=False)
  seqs, recs = splits["train"]
  np.testing.assert_array_equal(data.train_images, seqs)
  # no change flags in LEVIR-MCI: told from whether every caption is a no-change sentence
  np.testing.assert_array_equal(data.train_extras["changed"], [r["changed"] for r in recs])
  test, (_, recs) = data.eval_splits["test"], splits["test"]
  assert test.captions == [" ".join(caption_tokens(c)) for r in recs for c in r["captions"]]


def test_no_change_sentences():
  from rsjax.data.captions_grammar import CHANGE_TEMPLATES

  for s in CHANGE_TEMPLATES["none"] + ("there is no difference", "the two scenes seem identical",
                                       "the scene is the same as before", "almost nothing has "
                                       "changed", "no buildings have been built", "No change."):
    assert levir_change.is_no_change(s), s
  for s in ("a road was built from left to right in the middle", "many new houses appear",
            "two buildings were demolished in the upper left", "the same road has been widened"):
    assert not levir_change.is_no_change(s), s


def test_a_change_encoder_trains_on_levir_cc_pairs_and_reports_change_retrieval(levir, tmp_path):
  from helpers import TINY
  from rsjax.config import load_config
  from rsjax.data.captions_grammar import CHANGE_TYPES
  from rsjax.train import loop as train_loop

  keep = [o for o in TINY if o.startswith(("model.", "data.image_size"))]
  config = load_config(f"{CONFIG}:path={levir[0]},runlocal",
                       keep + ["train.steps=2", "train.checkpoint_every=2",
                               "model.temporal.heads=2"])
  results = train_loop.train(config, str(tmp_path / "run"))
  change = results["change"]
  recalls = change["recalls"]
  assert {"all", "changed", "unchanged"} <= set(recalls)
  # per type: only "none" (the unchanged pairs), no made-up type for the changed ones
  assert set(recalls) & set(CHANGE_TYPES) == {"none"} and recalls["none"] == recalls["unchanged"]
  assert change["num_pairs"] == 8 and set(change["detection"]) >= {"accuracy", "balanced"}


def test_each_bad_pair_is_named_on_one_line(levir, tmp_path):
  folder = copy_of(levir, tmp_path)
  where = os.path.join(folder, ANNOTATION)
  os.remove(os.path.join(folder, "images", "train", "B", "train_000003.png"))
  with pytest.raises(records.MissingImageError) as e:
    levir_change.validated_pairs(data_config(folder))
  assert str(e.value).startswith(f"{where}:images[3] [train/train_000003.png]: image file not "
                                 "found") and "\n" not in str(e.value)
  assert "data.skip_bad_records=True" in str(e.value)

  folder = copy_of(levir, tmp_path / "sizes")
  Image.new("RGB", (40, 40)).save(os.path.join(folder, "images", "val", "A", "val_000002.png"))
  with pytest.raises(records.PairSizeError,
                     match=r"images\[18\] \[val/val_000002.png\]: the dates differ in size: "
                           r"before 40x40, after 32x32 px") as e:
    levir_change.validated_pairs(data_config(folder))
  assert "\n" not in str(e.value)

  folder = copy_of(levir, tmp_path / "captions")
  edit_annotation(folder, lambda images: images[27].update(sentences=[]))
  with pytest.raises(records.EmptyCaptionsError,
                     match=r"images\[27\] \[test/test_000003.png\]: image .* has no captions"):
    levir_change.validated_pairs(data_config(folder))


def test_bad_pairs_are_listed_together_or_skipped_and_listed(levir, tmp_path, capsys):
  folder = copy_of(levir, tmp_path)
  os.remove(os.path.join(folder, "images", "train", "A", "train_000001.png"))
  Image.new("RGB", (40, 40)).save(os.path.join(folder, "images", "val", "B", "val_000000.png"))
  edit_annotation(folder, lambda images: images[30].update(sentences=[]))
  with pytest.raises(records.BadRecordError, match=r"3 bad records \(MissingImageError 1, "
                     r"EmptyCaptionsError 1, PairSizeError 1\)"):
    levir_change.validated_pairs(data_config(folder))
  capsys.readouterr()
  workdir = str(tmp_path / "run")
  arrays = levir_change.validated_pairs(data_config(folder, "data.skip_bad_records=True"),
                                        workdir, progress=False)
  assert {s: len(a) for s, (a, _) in arrays.items()} == {"train": 15, "val": 7, "test": 7}
  assert "train/train_000001.png" not in [r.key for r in arrays["train"][1]]
  log = capsys.readouterr().out
  assert "skipped 3 bad record(s)" in log
  for key in ("[train/train_000001.png]", "[val/val_000000.png]", "[test/test_000006.png]"):
    assert key in log
  with open(os.path.join(workdir, "bad_records.json")) as f:
    assert len(json.load(f)) == 3


def test_every_pair_bad_or_a_split_missing_is_a_clear_error(levir, tmp_path):
  folder = copy_of(levir, tmp_path)
  shutil.rmtree(os.path.join(folder, "images"))
  with pytest.raises(records.NoRecordsError) as e:
    levir_change.validated_pairs(data_config(folder, "data.skip_bad_records=True"),
                                 progress=False)
  assert "no usable records in split 'train': all 16 were bad (MissingImageError 16" in str(e.value)
  assert "\n" not in str(e.value)
  with pytest.raises(records.MissingImageError, match=r"32 bad records \(MissingImageError 32\)"):
    levir_change.validated_pairs(data_config(folder))

  folder = copy_of(levir, tmp_path / "split")
  edit_annotation(folder, lambda images: images.__setitem__(slice(16, 24), []))
  with pytest.raises(ConfigError, match=r"config key 'data.eval_splits': no pairs in split 'val' "
                     r"of .*LevirCCcaptions.json \(splits present: \['test', 'train'\]\)"):
    levir_change.validated_pairs(data_config(folder))
  with pytest.raises(ConfigError, match=r"config key 'data.format': 'karpathy' is not a LEVIR-CC"):
    levir_change.validated_pairs(data_config(folder, "data.format=karpathy"))
