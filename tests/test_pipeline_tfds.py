"""Real ../shared/data images through `rsjax data prepare` (TFDS array_record) and the grain
pipeline; bad inputs; resumed pipelines with worker processes on and off.

The bad-input set is written here (copies of one real RSICD JPEG, a truncated copy, and
annotation lines with each defect), since ../shared/data holds only clean data."""

import json
import pathlib

import numpy as np
import pytest

from rsjax import cli
from rsjax.data import augment, decode, records, stream, tfds_builders

PLAIN = augment.AugmentConfig(crop_scale=(1.0, 1.0), dihedral=False)
_PREPARED: dict[str, str] = {}


def _rsscn7_subset(shared_data: pathlib.Path, folder: pathlib.Path, per_class: int = 2) -> None:
  """A captions.jsonl with `per_class` train and val images of each RSSCN7 class (absolute
  paths into ../shared/data), labels only: 14 train + 14 val images."""
  taken: dict[tuple[str, str], int] = {}
  lines = []
  for line in (shared_data / "rsscn7" / "captions.jsonl").read_text().splitlines():
    row = json.loads(line)
    key = (row["label"], row["split"])
    if taken.get(key, 0) < per_class:
      taken[key] = taken.get(key, 0) + 1
      row["image"] = str(shared_data / "rsscn7" / row["image"])
      lines.append(json.dumps(row))
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")


def _prepare(name: str, shared_data: pathlib.Path, tmp_path_factory) -> str:
  """Prepares each set once per test session."""
  if name not in _PREPARED:
    data_dir = tmp_path_factory.getbasetemp() / "prepared"
    if name == "rsscn7":
      manual = tmp_path_factory.mktemp("rsscn7_subset")
      _rsscn7_subset(shared_data, manual)
    else:
      manual = shared_data / name
    _PREPARED[name] = tfds_builders.prepare(name, str(manual), str(data_dir))
  return _PREPARED[name]


def _tokenizer(tmp_path_factory) -> str:
  path = tmp_path_factory.getbasetemp() / "tok" / "tokenizer.model"
  if not path.exists():
    from rsjax.data.tokenizers import train_sentencepiece
    train_sentencepiece(["a river on the left of green fields", "many buildings and a road",
                         "an aerial photograph of grass", "a stadium near a square"] * 20,
                        path, vocab_size=80)
  return str(path)


# (set, split sizes, source image size, file type)
SETS = [
    ("rsscn7", {"train": 14, "val": 14}, (400, 400), "jpg"),
    ("rsicd_samples", {"train": 45, "test": 8}, (224, 224), "jpg"),
    ("ucm_captions_samples", {"train": 9}, (256, 256), "tif"),
    ("sydney_captions_samples", {"train": 9}, (500, 500), "tif"),
]


@pytest.mark.parametrize("name,splits,size,ext", SETS)
def test_samples_load_through_tfds_and_grain(shared_data, tmp_path_factory, name, splits, size,
                                             ext):
  """Each set prepares with the right split sizes; un-augmented grain batches hold exactly the
  source files' pixels (decoded and resized independently here), with tokenized captions."""
  builder = tfds_builders.load_prepared(_prepare(name, shared_data, tmp_path_factory))
  assert {s: v.num_examples for s, v in builder.info.splits.items()} == splits
  meta = builder.info.metadata
  assert meta["num_bad_records"] == 0 and len(meta["normalization"]["mean"]) == 3
  source = builder.as_data_source("train")
  first = source[0]
  assert first["key"].decode().endswith(ext)
  assert decode.decode(first["image"]).shape[:2] == size
  spec = stream.StreamSpec(32, 16, _tokenizer(tmp_path_factory), augment=PLAIN,
                           label_prompt="an aerial photograph of {label}")
  ds = stream.train_dataset(source, spec, batch_size=4, seed=0)
  batch = ds[0]
  assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert batch["tokens"].shape == (4, 16) and batch["tokens"].dtype == np.int32
  assert (batch["tokens"][:, 0] != 0).all()
  # Which record landed first: the seeded shuffle's choice, found back by pixels.
  expected = {i: decode.decode_resized(source[i]["image"], 32) for i in range(len(source))}
  matches = [i for i, img in expected.items() if np.array_equal(img, batch["image"][0])]
  assert len(matches) >= 1
  assert batch["image"].std() > 5


def test_prepared_set_trains_with_augmentation(shared_data, tmp_path_factory, tmp_path):
  """`rsjax train` with data.name="tfds" on the prepared RSICD samples: two steps of a tiny
  model, augmentations on, then the test split evaluated."""
  from helpers import tiny_config
  from rsjax.config import load_config
  from rsjax.train.loop import train
  prepared = pathlib.Path(_prepare("rsicd_samples", shared_data, tmp_path_factory))
  tiny = tiny_config()
  config = load_config(str(pathlib.Path(__file__).parents[1] / "configs" / "prepared.py"), [
      f"data.data_dir={prepared.parents[1]}", "data.builder=rsicd_samples", "data.image_size=32",
      "train.steps=2", "train.batch_size=8", "train.warmup_steps=1", "train.log_every=1",
      "eval.batch_size=8", "eval.at_step0=False", "model.text.vocab_size=512"])
  with config.unlocked():
    config.model = tiny.model
  import jax
  results = train(config, str(tmp_path), devices=jax.devices()[:1])  # one device: quick compiles
  assert 0 <= results["mR"] <= 100 and results["step"] == 2


def test_dataset_normalization_from_the_prepared_metadata(shared_data, tmp_path_factory):
  """configs/prepared.py:norm=dataset puts the prepared set's channel statistics (of its train
  images, at the builder's default 64 px) into the model, which then sees (pixel - mean) / std."""
  import jax
  import jax.numpy as jnp
  from rsjax.config import load_config
  from rsjax.data import sources
  from rsjax.models.vit import VisionTransformer
  prepared = pathlib.Path(_prepare("rsicd_samples", shared_data, tmp_path_factory))
  config = load_config(str(pathlib.Path(__file__).parents[1] / "configs" / "prepared.py")
                       + f":builder=rsicd_samples,data_dir={prepared.parents[1]},norm=dataset")
  mean, std = config.model.image.input_mean, config.model.image.input_std
  recs, _ = records.collect(sources.read_source("captions_jsonl", str(shared_data / "rsicd_samples")))
  expected = decode.channel_stats(
      decode.decode_resized(decode.read_bytes(r.images[0]), 64, r.images[0])
      for r in recs if r.split == "train")
  np.testing.assert_allclose(mean, expected.mean, rtol=1e-4)
  np.testing.assert_allclose(std, expected.std, rtol=1e-4)

  pixels = np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3)).astype(np.float32)
  small = dict(width=8, depth=1, heads=2, patch_size=8, embed_dim=4)
  vit = VisionTransformer(**small, input_norm="dataset", input_mean=tuple(mean),
                          input_std=tuple(std))
  params = vit.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  normalised = (pixels - np.asarray(mean)) / np.asarray(std)
  np.testing.assert_allclose(vit.apply(params, jnp.asarray(pixels / 127.5 - 1.0))["embedding"],
                             VisionTransformer(**small).apply(params, jnp.asarray(normalised))["embedding"],
                             rtol=1e-4, atol=1e-5)


def test_cli_prepare_and_tokenizer(shared_data, tmp_path, capsys):
  rc = cli.main(["data", "prepare", "rsicd_samples", "--manual-dir",
                 str(shared_data / "rsicd_samples"), "--data-dir", str(tmp_path)])
  assert rc == 0
  assert "test 8, train 45" in capsys.readouterr().out
  rc = cli.main(["data", "tokenizer", "rsicd_samples", "--data-dir", str(tmp_path),
                 "--vocab-size", "200"])
  assert rc == 0
  model = tmp_path / "rsicd_samples" / "1.0.0" / "tokenizer.model"
  assert model.is_file() and f"data.tokenizer_path={model}" in capsys.readouterr().out
  from rsjax.data.tokenizers import SentencePieceTokenizer
  assert 100 < SentencePieceTokenizer(model).vocab_size <= 200


# ---------------------------------------------------------------------------------------------
# Bad input

def _bad_set(shared_data: pathlib.Path, folder: pathlib.Path) -> dict[str, str]:
  """Two good records and one of each defect; returns {defect: its image name}."""
  jpg = (shared_data / "rsicd_samples" / "RSICD_images" / "00001.jpg").read_bytes()
  (folder / "imgs").mkdir(parents=True)
  for name in ("good1", "good2", "empty", "number", "split"):
    (folder / "imgs" / f"{name}.jpg").write_bytes(jpg)
  (folder / "imgs" / "cut.jpg").write_bytes(jpg[: len(jpg) // 3])
  rows = [
      {"image": "imgs/good1.jpg", "split": "train", "captions": ["a playground"]},
      {"image": "imgs/missing.jpg", "split": "train", "captions": ["lost"]},
      {"image": "imgs/cut.jpg", "split": "train", "captions": ["a cut file"]},
      {"image": "imgs/empty.jpg", "split": "train", "captions": []},
      {"image": "imgs/number.jpg", "split": "train", "captions": ["fine", 42]},
      {"image": "imgs/split.jpg", "split": "training", "captions": ["a typo in the split"]},
      {"image": "imgs/good2.jpg", "split": "test", "captions": ["trees and buildings"]},
  ]
  (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return {"MissingImageError": "missing.jpg", "CorruptImageError": "cut.jpg",
          "EmptyCaptionsError": "empty.jpg", "CaptionTypeError": "number.jpg",
          "UnknownSplitError": "split.jpg"}


def _only(folder: pathlib.Path, keep: str) -> pathlib.Path:
  """A copy of the bad set's annotation with the good records and one defect."""
  out = folder.parent / f"only_{keep}"
  out.mkdir()
  lines = [l for l in (folder / "captions.jsonl").read_text().splitlines()
           if "good" in l or keep in l]
  (out / "captions.jsonl").write_text("\n".join(lines) + "\n")
  (out / "imgs").symlink_to(folder / "imgs")
  return out


def test_each_bad_input_raises_its_named_error(shared_data, tmp_path):
  bad = _bad_set(shared_data, tmp_path / "bad")
  for error, image in bad.items():
    manual = _only(tmp_path / "bad", image)
    with pytest.raises(getattr(records, error), match=rf"captions.jsonl:2 \[imgs/{image}\]"):
      tfds_builders.prepare("captions_jsonl", str(manual), str(tmp_path / f"out_{error}"))


def test_skip_bad_records_skips_exactly_the_bad_ones(shared_data, tmp_path, capsys):
  bad = _bad_set(shared_data, tmp_path / "bad")
  rc = cli.main(["data", "prepare", "captions_jsonl", "--manual-dir", str(tmp_path / "bad"),
                 "--data-dir", str(tmp_path / "out"), "--skip-bad-records"])
  assert rc == 0
  out = capsys.readouterr()
  assert "5 bad record(s) skipped" in out.out
  logged = out.out + out.err
  builder = tfds_builders.load_prepared(str(tmp_path / "out" / "captions_jsonl" / "1.0.0"))
  assert {s: v.num_examples for s, v in builder.info.splits.items()} == {"train": 1, "test": 1}
  meta = builder.info.metadata
  assert meta["num_bad_records"] == 5
  listed = {item["error"]: item["record"] for item in meta["bad_records"]}
  assert sorted(listed) == sorted(bad)
  lines = {error: f"captions.jsonl:{n}" for n, error in enumerate(
      ["MissingImageError", "CorruptImageError", "EmptyCaptionsError", "CaptionTypeError",
       "UnknownSplitError"], start=2)}
  for error, where in lines.items():
    assert listed[error].endswith(where)
    assert f"{error}: {listed[error]} [imgs/{bad[error]}]" in logged  # the log names each
  kept = [builder.as_data_source(s)[0]["key"].decode() for s in ("train", "test")]
  assert kept == ["imgs/good1.jpg", "imgs/good2.jpg"]


def test_annotated_loader_skip_option(shared_data, tmp_path):
  """data.name="annotated" honours data.skip_bad_records the same way."""
  from rsjax.data.annotated import load_annotated
  import ml_collections
  defects = _bad_set(shared_data, tmp_path / "bad")
  data = ml_collections.ConfigDict(dict(path=str(tmp_path / "bad"), format="captions_jsonl",
                                        image_size=16, skip_bad_records=False))
  with pytest.raises(records.BadRecordError, match="5 bad records") as refused:
    load_annotated(data, str(tmp_path / "w1"), 8, 64)
  listed = str(refused.value).splitlines()[1:]  # all five in one run, in file order, each named
  assert [line.split(":")[0].strip() for line in listed] == [
      "MissingImageError", "CorruptImageError", "EmptyCaptionsError", "CaptionTypeError",
      "UnknownSplitError"]
  assert all(defects[line.split(":")[0].strip()] in line for line in listed)
  data.skip_bad_records = True
  loaded = load_annotated(data, str(tmp_path / "w2"), 8, 64)
  assert loaded.train_images.shape == (1, 16, 16, 3)
  assert list(loaded.eval_splits) == ["test"] and len(loaded.eval_splits["test"].images) == 1


# ---------------------------------------------------------------------------------------------
# Resumption

def _batches(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b) -> bool:
  return all(np.array_equal(x["image"], y["image"]) and np.array_equal(x["tokens"], y["tokens"])
             for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_pipeline_yields_the_same_batches(shared_data, tmp_path_factory, tmp_path,
                                                  workers):
  """Augmented RSSCN7 batches: 3 batches, checkpoint (orbax + grain, as the trainer does), then
  3 more; a fresh iterator restored from the checkpoint yields the same 3 more. The batches
  are also identical with and without worker processes."""
  import jax
  import jax.numpy as jnp
  import ml_collections
  from rsjax.checkpoint import Checkpointer

  source = tfds_builders.load_prepared(_prepare("rsscn7", shared_data, tmp_path_factory)) \
      .as_data_source("train")
  spec = stream.StreamSpec(24, 12, _tokenizer(tmp_path_factory),
                           augment.AugmentConfig(crop_scale=(0.5, 1.0), dihedral=True,
                                                 color_jitter=0.2),
                           label_prompt="an aerial photograph of {label}")
  make = lambda: stream.train_iterator(source, spec, 6, seed=3, num_workers=workers, prefetch=2)
  it = make()
  head = _batches(it, 3)
  state = {"w": jnp.arange(3.0)}
  config = ml_collections.ConfigDict({"model": {}})
  ckpt = Checkpointer(tmp_path / "ckpt")
  ckpt.save(3, state, it, config)
  tail = _batches(it, 3)
  ckpt.close()

  resumed = make()
  ckpt = Checkpointer(tmp_path / "ckpt")
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
  ckpt.restore(3, abstract, resumed)
  ckpt.close()
  assert _same(_batches(resumed, 3), tail)
  assert not _same(head[:1], tail[:1])  # the stream moves on

  # Worker processes change where batches are made, not what they hold.
  reference = stream.train_dataset(source, spec, 6, seed=3)
  assert _same(head + tail, [reference[i] for i in range(6)])
