"""Bad data through `rsjax train`: a truncated JPEG, a missing image file and an empty caption list
in a captions.jsonl set. Each stops the run with an error naming the file or record; with
data.skip_bad_records=True the run trains on the rest and reports how many it skipped, and which.
A file that goes bad while a streamed run is going is named at the step that reads it.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import pytest

from rsjax.train import loop as train_loop
from rsjax.config import load_config
from rsjax.data import records

REPO = pathlib.Path(__file__).resolve().parents[1]
ANNOTATED = str(REPO / "configs" / "annotated.py")
ONE_DEVICE = jax.devices()[:1]
TINY_MODEL = [
    "data.image_size=32", "model.embed_dim=16",
    "model.image.width=32", "model.image.depth=1", "model.image.heads=2", "model.image.patch_size=8",
    "model.text.width=32", "model.text.depth=1", "model.text.heads=2",
    "train.batch_size=8", "train.steps=4", "train.warmup_steps=1", "train.log_every=1",
    "train.checkpoint_every=2", "eval.batch_size=8", "eval.at_step0=False",
]


@pytest.fixture
def small_set(shared_data, tmp_path):
  """16 train + 8 test RSICD samples copied into tmp_path (tests may break the copies)."""
  src = shared_data / "rsicd_samples"
  rows = [json.loads(line) for line in (src / "captions.jsonl").read_text().splitlines()]
  rows = [r for r in rows if r["split"] == "train"][:16] + [r for r in rows if r["split"] == "test"]
  for r in rows:
    (tmp_path / r["image"]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / r["image"], tmp_path / r["image"])
  _write_rows(tmp_path, rows)
  return tmp_path, rows


def _write_rows(folder, rows):
  (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _truncate(path):
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _break(folder, rows, defect):
  """Applies one defect to a train record; returns the name an error must mention."""
  if defect == "truncated_jpeg":
    _truncate(folder / rows[3]["image"])
    return pathlib.Path(rows[3]["image"]).name
  if defect == "missing_file":
    (folder / rows[5]["image"]).unlink()
    return pathlib.Path(rows[5]["image"]).name
  rows[7]["captions"] = []
  _write_rows(folder, rows)
  return pathlib.Path(rows[7]["image"]).name


def _config(folder, *overrides):
  return load_config(f"{ANNOTATED}:path={folder}", TINY_MODEL + list(overrides))


ERRORS = {"truncated_jpeg": records.CorruptImageError, "missing_file": records.MissingImageError,
          "empty_captions": records.EmptyCaptionsError}


@pytest.mark.parametrize("defect", sorted(ERRORS))
def test_bad_record_stops_the_run_naming_it(small_set, tmp_path_factory, defect):
  folder, rows = small_set
  name = _break(folder, rows, defect)
  with pytest.raises(ERRORS[defect], match=name):
    train_loop.train(_config(folder), str(tmp_path_factory.mktemp("run")), devices=ONE_DEVICE)


def test_skip_bad_records_skips_exactly_the_bad_ones_and_reports_them(small_set, tmp_path_factory,
                                                                      capsys):
  folder, rows = small_set
  names = [_break(folder, rows, d) for d in sorted(ERRORS)]
  train_loop.train(_config(folder, "data.skip_bad_records=True"),
                  str(tmp_path_factory.mktemp("run")), devices=ONE_DEVICE)
  out = capsys.readouterr().out
  assert "skipped 3 bad record(s) (" in out
  for name, error in zip(names, [ERRORS[d] for d in sorted(ERRORS)]):
    assert any(name in line and error.__name__ in line for line in out.splitlines()), (name, out)
  assert "train 13 images" in out  # 16 - 3, nothing else dropped


def test_cli_names_the_bad_record_in_one_line(small_set, tmp_path_factory):
  folder, rows = small_set
  name = _break(folder, rows, "truncated_jpeg")
  env = dict(os.environ, XLA_FLAGS="", PYTHONPATH=str(REPO))
  sets = [x for item in TINY_MODEL for x in ("--set", item)]
  done = subprocess.run([sys.executable, "-m", "rsjax.cli", "train", "--config",
                         f"{ANNOTATED}:path={folder}", "--workdir",
                         str(tmp_path_factory.mktemp("run")), *sets],
                        env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 2, done.stderr[-3000:]  # bad input: exit 2 (rsjax/errors.py)
  errors = [line for line in done.stderr.splitlines() if line.startswith("rsjax train:")]
  assert len(errors) == 1 and "input error" in errors[0] and name in errors[0], done.stderr
  assert "data.skip_bad_records=True" in errors[0] and "Traceback" not in done.stderr


def test_file_going_bad_during_a_streamed_run_is_named(small_set, tmp_path_factory, monkeypatch):
  """The set passes its checks at start-up; then every train image is truncated on disk (a failing
  network file system, say). The first batch that reads one stops the run naming the file."""
  folder, rows = small_set
  loader = train_loop.load_retrieval_data

  def load_then_break(*args, **kwargs):
    data = loader(*args, **kwargs)
    for r in rows:
      if r["split"] == "train":
        _truncate(folder / r["image"])
    return data

  monkeypatch.setattr(train_loop, "load_retrieval_data", load_then_break)
  with pytest.raises(records.CorruptImageError, match=r"RSICD_images/.*\.jpg|\d+\.jpg"):
    train_loop.train(_config(folder, "data.stream=True"), str(tmp_path_factory.mktemp("run")),
                    devices=ONE_DEVICE)
