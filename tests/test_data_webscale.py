"""Web-scale corpus conversion (webdataset tars, parquet + image folder): streaming, resumable.

No RS5M / SkyScript files exist here, so the tests write small corpora in those layouts from
real RSICD sample JPEGs of ../shared/data."""

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rsjax.data import augment, records, stream, tfds_builders, webscale


def _jpegs(shared_data, n):
  folder = shared_data / "rsicd_samples" / "RSICD_images"
  return [p.read_bytes() for p in sorted(folder.glob("*.jpg"))[:n]]


def _tar(path, samples):
  with tarfile.open(path, "w") as tar:
    for name, data in samples:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def _corpus(shared_data, tmp_path):
  """Two tar shards, 7 samples: one truncated image, one without a caption."""
  jpgs = _jpegs(shared_data, 7)
  first = []
  for i in range(4):
    data = jpgs[i] if i != 2 else jpgs[i][:500]
    first += [(f"s{i:04d}.jpg", data), (f"s{i:04d}.txt", f"caption {i}".encode())]
  second = []
  for i in range(4, 7):
    second.append((f"s{i:04d}.jpg", jpgs[i]))
    if i != 5:
      second.append((f"s{i:04d}.json", json.dumps({"caption": f"caption {i}"}).encode()))
  _tar(tmp_path / "a.tar", first)
  _tar(tmp_path / "b.tar", second)
  return [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")]


def _read_all(out):
  src = webscale.ConvertedSource(str(out))
  return [src[i] for i in range(len(src))]


def test_webdataset_conversion_names_bad_samples_and_skips_them(shared_data, tmp_path):
  tars = _corpus(shared_data, tmp_path)
  with pytest.raises(records.CorruptImageError, match=r"a.tar:s0002"):
    webscale.convert("webdataset", tars, str(tmp_path / "strict"), shard_size=2, progress=False)
  webscale.convert("webdataset", tars, str(tmp_path / "out"), shard_size=2,
                   skip_bad_records=True, progress=False)
  rows = _read_all(tmp_path / "out")
  assert [r["captions"] for r in rows] == [[f"caption {i}"] for i in (0, 1, 3, 4, 6)]
  state = json.loads((tmp_path / "out" / "progress.json").read_text())
  assert [(b["record"].split("/")[-1], b["error"]) for b in state["bad_records"]] == [
      ("a.tar:s0002", "CorruptImageError"), ("b.tar:s0005", "EmptyCaptionsError")]
  assert rows[0]["image"] == _jpegs(shared_data, 1)[0]


def test_interrupted_conversion_resumes_without_redoing_shards(shared_data, tmp_path,
                                                              monkeypatch):
  tars = _corpus(shared_data, tmp_path)
  webscale.convert("webdataset", tars, str(tmp_path / "whole"), shard_size=2,
                   skip_bad_records=True, progress=False)
  written = []
  real_write = webscale._write_shard

  def failing_write(path, payloads):
    if len(written) == 2:
      raise KeyboardInterrupt("simulated interruption")
    written.append(path.rsplit("/", 1)[-1])
    real_write(path, payloads)

  monkeypatch.setattr(webscale, "_write_shard", failing_write)
  with pytest.raises(KeyboardInterrupt):
    webscale.convert("webdataset", tars, str(tmp_path / "resumed"), shard_size=2,
                     skip_bad_records=True, progress=False)
  with pytest.raises(ValueError, match="not complete"):
    webscale.ConvertedSource(str(tmp_path / "resumed"))
  written.clear()
  monkeypatch.setattr(webscale, "_write_shard", lambda p, pl: (written.append(p.rsplit("/", 1)[-1]),
                                                              real_write(p, pl)))
  webscale.convert("webdataset", tars, str(tmp_path / "resumed"), shard_size=2,
                   skip_bad_records=True, progress=False)
  # a.tar has chunks 0, 1 (done before the interruption); b.tar's two chunks remain.
  assert written == ["shard-00001-00000.array_record", "shard-00001-00001.array_record"]
  assert [r["key"] for r in _read_all(tmp_path / "resumed")] == \
      [r["key"] for r in _read_all(tmp_path / "whole")]


def test_parquet_with_image_folder_streams_into_the_pipeline(shared_data, tmp_path):
  jpgs = _jpegs(shared_data, 4)
  (tmp_path / "img").mkdir()
  for i, data in enumerate(jpgs):
    (tmp_path / "img" / f"{i}.jpg").write_bytes(data)
  table = pa.table({"path": ["0.jpg", "1.jpg", "gone.jpg", "2.jpg", "3.jpg"],
                    "title": [["a port"], ["two", "captions"], ["x"], ["a stadium"], ["a square"]]})
  pq.write_table(table, tmp_path / "meta.parquet")
  with pytest.raises(records.MissingImageError, match=r"row 2 .*gone.jpg"):
    webscale.convert("parquet", [str(tmp_path / "meta.parquet")], str(tmp_path / "o1"),
                     image_dir=str(tmp_path / "img"), image_column="path",
                     caption_column="title", progress=False)
  webscale.convert("parquet", [str(tmp_path / "meta.parquet")], str(tmp_path / "o2"),
                   image_dir=str(tmp_path / "img"), image_column="path", caption_column="title",
                   skip_bad_records=True, progress=False)
  rows = _read_all(tmp_path / "o2")
  assert [r["captions"] for r in rows] == [["a port"], ["two", "captions"], ["a stadium"],
                                           ["a square"]]
  from rsjax.data.tokenizers import train_sentencepiece
  tok = train_sentencepiece(["a port", "two captions", "a stadium", "a square"] * 10,
                            tmp_path / "t.model", vocab_size=40)
  spec = stream.StreamSpec(16, 8, tok, augment.AugmentConfig())
  batch = stream.train_dataset(webscale.ConvertedSource(str(tmp_path / "o2")), spec, 4, 0)[0]
  assert batch["image"].shape == (4, 16, 16, 3) and batch["tokens"].shape == (4, 8)
  assert np.all(batch["tokens"][:, 0] != 0)


def test_converted_corpus_trains_with_rsjax_train(shared_data, tmp_path):
  """data.name="webscale" (the pretraining configs' data): a converted corpus streams through the
  trainer, with retrieval evaluation on a prepared held-out set."""
  import jax
  from helpers import tiny_config
  from rsjax.train.loop import train
  webscale.convert("webdataset", _corpus(shared_data, tmp_path), str(tmp_path / "corpus"),
                   shard_size=2, skip_bad_records=True, progress=False)
  tfds_builders.prepare("rsicd_samples", str(shared_data / "rsicd_samples"), str(tmp_path / "held"))
  config = tiny_config("train.steps=2", "train.batch_size=4", "eval.batch_size=8",
                       "eval.at_step0=False", "model.text.vocab_size=49408")
  with config.unlocked():
    config.data = {"name": "webscale", "converted_dir": str(tmp_path / "corpus"),
                   "tokenizer_path": "clip_bpe", "image_size": 32,
                   "augment": {"crop_scale_min": 0.5, "dihedral": True, "color_jitter": 0.0},
                   "num_workers": 0, "prefetch": 2, "eval_builder": "rsicd_samples",
                   "eval_data_dir": str(tmp_path / "held")}
  results = train(config, str(tmp_path / "run"), devices=jax.devices()[:1])
  assert results["step"] == 2 and 0 <= results["mR"] <= 100
