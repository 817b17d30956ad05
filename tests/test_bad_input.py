"""The edges of bad input, each as a new user meets it: duplicate rows, byte-order marks, empty
files, blank captions, non-UTF-8 lines, image modes, sets whose every record is bad, sets without
a test split or without captions.jsonl, `rsjax data prepare` on such sets, and the CLI's rule for
its own bugs (rsjax/errors.py)."""

import io
import json

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from helpers import SMOKE
from rsjax import cli
from rsjax.data import annotated, decode, records, sources
from rsjax.errors import ConfigError
import rsjax.train.loop  # noqa: F401  imported before jax.jit is patched: modules jit at import time

ANNOTATED = SMOKE.replace("smoke.py", "annotated.py")
TINY = ["data.image_size=16", "model.image.patch_size=8", "model.image.width=32",
        "model.image.depth=1", "model.image.heads=2", "model.text.width=32", "model.text.depth=1",
        "model.text.heads=2", "model.embed_dim=16", "train.batch_size=8", "train.steps=2",
        "eval.batch_size=8", "eval.at_step0=False", "train.warmup_steps=1"]


def _png(path, seed=0):
  rng = np.random.default_rng(seed)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray((rng.random((20, 20, 3)) * 255).astype(np.uint8)).save(path)


def _set(folder, rows, images=None, prefix=b""):
  for name in images if images is not None else {r["image"] for r in rows if "image" in r}:
    _png(folder / name, seed=hash(name) % 1000)
  (folder / "captions.jsonl").write_bytes(prefix + "".join(json.dumps(r) + "\n"
                                                           for r in rows).encode())
  return folder


def _data(folder, skip_bad_records=False):
  return ml_collections.ConfigDict(dict(path=str(folder), format="captions_jsonl", image_size=16,
                                        skip_bad_records=skip_bad_records))


def _cli(capsys, *args):
  code = cli.main([str(a) for a in args])
  captured = capsys.readouterr()
  return code, captured.out, captured.err


ROWS = [{"image": "a.png", "split": "train", "captions": ["a red roof"]},
        {"image": "b.png", "split": "train", "captions": ["a lake"]},
        {"image": "c.png", "split": "test", "captions": ["a road"]}]


def test_rows_naming_the_same_image_are_merged_in_order(tmp_path, capsys):
  rows = ROWS[:2] + [{"image": "a.png", "split": "train", "captions": ["a roof", "a red roof"]}]
  recs, bad = annotated.read_checked(_data(_set(tmp_path, rows + ROWS[2:])))
  assert not len(bad) and [r.key for r in recs] == ["a.png", "b.png", "c.png"]
  assert recs[0].captions == ("a red roof", "a roof")  # appended, the exact repeat dropped
  assert "merged 1 row(s)" in capsys.readouterr().out


def test_the_same_image_in_two_splits_is_refused_naming_both_lines(tmp_path):
  rows = ROWS + [{"image": "a.png", "split": "test", "captions": ["a roof"]}]
  recs, bad = annotated.read_checked(_data(_set(tmp_path, rows)))
  assert [r.key for r in recs] == ["a.png", "b.png", "c.png"]  # the first row kept
  (where, kind, message), = bad.items
  assert kind == "DuplicateImageError" and where.endswith("captions.jsonl:4")
  assert "captions.jsonl:1" in message and "'test'" in message and "'train'" in message


def test_byte_order_mark_is_accepted(tmp_path):
  recs, bad = annotated.read_checked(_data(_set(tmp_path, ROWS, prefix=b"\xef\xbb\xbf")))
  assert not len(bad) and [r.key for r in recs] == ["a.png", "b.png", "c.png"]


def test_empty_annotation_file_is_called_empty(tmp_path):
  (tmp_path / "captions.jsonl").write_bytes(b"")
  with pytest.raises(records.NoRecordsError, match=r"captions.jsonl: the annotation file is empty"):
    annotated.read_checked(_data(tmp_path))


@pytest.mark.parametrize("captions, wording", [([""], "has only blank captions"),
                                               (["  ", ""], "has only blank captions"),
                                               ([], "has no captions")])
def test_blank_and_missing_captions_are_told_apart(tmp_path, captions, wording):
  rows = ROWS + [{"image": "d.png", "split": "train", "captions": captions}]
  _, bad = annotated.read_checked(_data(_set(tmp_path, rows)))
  (_, kind, message), = bad.items
  assert kind == "EmptyCaptionsError" and wording in message and "captions.jsonl:4" in message


def test_a_line_that_is_not_utf8_is_one_bad_record(tmp_path):
  _set(tmp_path, ROWS)
  with open(tmp_path / "captions.jsonl", "ab") as f:
    f.write(b'{"image": "a.png", "captions": ["caf\xe9"]}\n')  # Latin-1, not UTF-8
  recs, bad = annotated.read_checked(_data(tmp_path))
  assert len(recs) == 3 and len(bad) == 1
  assert "captions.jsonl:4" in bad.items[0][2] and "not UTF-8" in bad.items[0][2]


def test_every_record_bad_with_skipping_lists_them_before_refusing(tmp_path, capsys):
  rows = [{"image": f"missing{i}.png", "split": "train", "captions": ["x"]} for i in range(3)]
  _set(tmp_path, rows, images=[])
  with pytest.raises(records.NoRecordsError, match=r"all 3 were bad \(MissingImageError 3"):
    annotated.load_annotated(_data(tmp_path, skip_bad_records=True), str(tmp_path / "w"), 8, 64)
  out = capsys.readouterr().out
  assert "skipped 3 bad record(s) (MissingImageError 3)" in out
  assert all(f"missing{i}.png" in out for i in range(3))


def test_decode_failures_are_listed_with_their_line(tmp_path, capsys):
  _set(tmp_path, ROWS)
  (tmp_path / "b.png").write_bytes(b"not an image")
  annotated.load_annotated(_data(tmp_path, skip_bad_records=True), str(tmp_path / "w"), 8, 64)
  line, = [x for x in capsys.readouterr().out.splitlines() if "CorruptImageError:" in x]
  assert "captions.jsonl:2 [b.png]" in line and "BytesIO" not in line


def test_many_faults_are_reported_in_one_run_with_counts(tmp_path):
  rows = ROWS + [{"image": f"gone{i}.png", "split": "train", "captions": ["x"]} for i in range(7)]
  rows += [{"image": "a2.png", "split": "val", "captions": [3]}, {"split": "train"}]
  _set(tmp_path, rows, images=["a.png", "b.png", "c.png", "a2.png"])
  with pytest.raises(records.BadRecordError) as refused:
    annotated.load_annotated(_data(tmp_path), str(tmp_path / "w"), 8, 64)
  head, *listed = str(refused.value).splitlines()
  assert "9 bad records (MissingImageError 7, CaptionTypeError 1, BadRecordError 1)" in head
  assert "data.skip_bad_records=True" in head and len(listed) == 9


@pytest.mark.parametrize("mode, fmt", [("1", "PNG"), ("L", "PNG"), ("P", "PNG"), ("LA", "PNG"),
                                       ("RGBA", "PNG"), ("P", "TIFF"), ("CMYK", "TIFF"),
                                       ("L", "TIFF"), ("RGB", "BMP"), ("P", "BMP")])
def test_images_of_any_mode_decode_to_their_rgb_colours(mode, fmt):
  rng = np.random.default_rng(1)
  image = Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).convert(mode)
  buf = io.BytesIO()
  image.save(buf, fmt)
  got = decode.decode_resized(buf.getvalue(), 24, f"x.{fmt.lower()}")
  assert got.shape == (24, 24, 3) and got.dtype == np.uint8
  np.testing.assert_allclose(got, np.asarray(image.convert("RGB")), atol=1)


def test_16_bit_gray_png_keeps_its_levels():
  levels = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
  buf = io.BytesIO()
  Image.fromarray(levels).save(buf, "PNG")
  got = decode.decode_resized(buf.getvalue(), 16, "x.png")
  np.testing.assert_allclose(got[:, :, 0], levels / 257.0, atol=1)


def _never_compile(*args, **kwargs):
  raise AssertionError("compiled before refusing the data set")


def test_train_without_a_test_split_is_refused_before_the_model(tmp_path, capsys, monkeypatch):
  rows = [dict(r, split="train") for r in ROWS]
  folder = _set(tmp_path / "set", rows)
  monkeypatch.setattr(jax, "jit", _never_compile)
  code, _, err = _cli(capsys, "train", "--config", f"{ANNOTATED}:path={folder}", "--workdir",
                      tmp_path / "run", *[x for s in TINY for x in ("--set", s)])
  assert code == 2 and err.count("\n") == 1, err
  assert err.startswith("rsjax train: config error: config key 'eval.split'") and "'test'" in err


def test_train_on_a_class_folder_without_captions_jsonl_names_the_format(tmp_path, capsys):
  _png(tmp_path / "set" / "forest" / "1.png")
  code, _, err = _cli(capsys, "train", "--config", f"{ANNOTATED}:path={tmp_path / 'set'}",
                      "--workdir", tmp_path / "run")
  assert code == 2 and err.count("\n") == 1, err
  assert "has no captions.jsonl" in err and "data.format=image_folder" in err


def test_check_data_paths_refuses_an_empty_folder(tmp_path):
  from rsjax.config import check_data_paths, load_config
  (tmp_path / "empty").mkdir()
  with pytest.raises(ConfigError, match="empty"):
    check_data_paths(load_config(f"{ANNOTATED}:path={tmp_path / 'empty'}"))


def test_prepare_merges_duplicate_rows_and_refuses_a_missing_or_empty_folder(tmp_path, capsys):
  rows = ROWS + [{"image": "a.png", "split": "train", "captions": ["a roof seen again"]}]
  folder = _set(tmp_path / "set", rows)
  code, out, err = _cli(capsys, "data", "prepare", "captions_jsonl", "--manual-dir", folder,
                        "--data-dir", tmp_path / "out")
  assert code == 0, err
  assert "merged 1 row(s)" in out and "test 1, train 2" in out
  (tmp_path / "empty").mkdir()
  for manual, word in ((tmp_path / "nowhere", "is not a folder"), (tmp_path / "empty", "is empty")):
    code, _, err = _cli(capsys, "data", "prepare", "captions_jsonl", "--manual-dir", manual,
                        "--data-dir", tmp_path / "out2")
    assert code == 2 and err.count("\n") == 1 and word in err and str(manual) in err, err


def test_prepare_lists_every_bad_record_and_loses_no_prepared_set(tmp_path, capsys):
  rows = ROWS + [{"image": "gone.png", "split": "train", "captions": ["x"]},
                 {"image": "b.png", "split": "test", "captions": ["a leak"]}]
  folder = _set(tmp_path / "set", rows, images=["a.png", "b.png", "c.png"])
  code, _, err = _cli(capsys, "data", "prepare", "captions_jsonl", "--manual-dir", folder,
                      "--data-dir", tmp_path / "out")
  assert code == 2 and "Traceback" not in err and "tensorflow" not in err, err
  assert "2 bad records (MissingImageError 1, DuplicateImageError 1)" in err
  assert "--skip-bad-records" in err
  code, out, err = _cli(capsys, "data", "prepare", "captions_jsonl", "--manual-dir", folder,
                        "--data-dir", tmp_path / "out", "--skip-bad-records")
  assert code == 0 and "2 bad record(s) skipped" in out, err


def test_a_bug_says_so_and_shows_its_traceback_only_when_asked(capsys, monkeypatch):
  from rsjax.commands import report

  def broken(args):
    raise TypeError("an rsjax bug")

  monkeypatch.setattr(report, "run", broken)
  code, _, err = _cli(capsys, "report", "/nonexistent")
  assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
  assert "internal error: TypeError: an rsjax bug" in err and "RSJAX_DEBUG=1" in err
  monkeypatch.setenv("RSJAX_DEBUG", "1")
  code, _, err = _cli(capsys, "report", "/nonexistent")
  assert code == 1 and "Traceback" in err and err.strip().endswith("please report it")


def test_unknown_annotation_format_is_a_config_error(tmp_path):
  with pytest.raises(ConfigError, match="data.format"):
    sources.read_source("csv", str(tmp_path))


def test_every_bad_record_is_written_to_the_workdir_however_many(tmp_path, capsys):
  rows = ROWS + [{"image": f"gone{i}.png", "split": "train", "captions": ["x"]}
                 for i in range(records.LISTED + 5)]
  _set(tmp_path / "set", rows, images=["a.png", "b.png", "c.png"])
  annotated.validated(_data(tmp_path / "set", skip_bad_records=True), str(tmp_path / "run"))
  out = capsys.readouterr().out
  assert "... and 5 more" in out and "bad_records.json" in out
  listed = json.loads((tmp_path / "run" / "bad_records.json").read_text())
  assert [r["record"].rsplit(":", 1)[1] for r in listed] == [str(i) for i in range(4, 4 + 55)]


def test_a_mistyped_train_split_is_a_config_error_even_beside_bad_records(tmp_path):
  rows = ROWS + [{"image": "gone.png", "split": "test", "captions": ["x"]}]
  data = _data(_set(tmp_path, rows, images=["a.png", "b.png", "c.png"]), skip_bad_records=True)
  data.train_split = "trian"
  with pytest.raises(ConfigError, match="data.train_split"):
    annotated.validated(data)


def test_only_the_train_splits_bad_records_are_blamed_for_an_empty_train_split(tmp_path):
  rows = [{"image": "gone.png", "split": "train", "captions": ["x"]},
          {"image": "c.png", "split": "test", "captions": ["a road"]},
          {"image": "gone2.png", "split": "test", "captions": ["y"]}]
  _set(tmp_path, rows, images=["c.png"])
  with pytest.raises(records.NoRecordsError, match=r"split 'train': all 1 were bad"):
    annotated.validated(_data(tmp_path, skip_bad_records=True))


def test_periodic_evaluation_without_a_val_split_is_refused_before_the_model(
    tmp_path, capsys, monkeypatch):
  folder = _set(tmp_path / "set", ROWS)
  monkeypatch.setattr(jax, "jit", _never_compile)
  code, _, err = _cli(capsys, "train", "--config", f"{ANNOTATED}:path={folder}", "--workdir",
                      tmp_path / "run", *[x for s in TINY + ["eval.every=1"] for x in ("--set", s)])
  assert code == 2 and err.count("\n") == 1, err
  assert "config key 'eval.every'" in err and "'val'" in err and "eval.every=0" in err


def test_a_config_argument_that_does_not_parse_is_a_config_error():
  from rsjax.config import load_config
  with pytest.raises(ConfigError, match=r"argument 'res=abc'"):
    load_config(f"{ANNOTATED}:res=abc")


def test_malformed_fields_are_bad_records_not_crashes(tmp_path):
  rows = ROWS + [{"image": "a2.png", "split": "train", "captions": ["x"], "label": {"a": 1}},
                 {"image": "a3.png", "split": "train", "captions": ["x"], "changed": "yes"},
                 {"image": 5, "split": "train", "captions": ["x"]},
                 {"image": "a4.png", "split": "train", "captions": ["x"], "keywords": "ab"}]
  recs, bad = annotated.read_checked(_data(_set(tmp_path, rows, images=[
      "a.png", "b.png", "c.png", "a2.png", "a3.png", "a4.png"])))
  assert [_line for _line in (w.rsplit(":", 1)[1] for w, _, _ in bad.items)] == ["4", "5", "6"]
  assert recs[-1].key == "a4.png" and recs[-1].keywords == ()  # a bare string is no keyword list
  karpathy = tmp_path / "dataset.json"
  karpathy.write_text(json.dumps({"images": [
      {"filename": "a.png", "split": "train", "sentences": [{"raw": None}]},
      {"filename": 7, "split": "train", "sentences": [{"raw": "x"}]},
      {"filename": "b.png", "split": "train", "sentences": [{"tokens": ["a", "lake"]}]}]}))
  recs, bad = records.collect(sources.read_source("karpathy", str(karpathy)))
  assert [k for _, k, _ in bad.items] == ["CaptionTypeError", "BadRecordError"]
  assert [r.captions for r in recs] == [("a lake",)]
