"""Label-only sets (RSSCN7-style): class-prompt captions, class labels through the pipeline, flips
and quarter turns of in-memory images, same-class positives and nested hash codes in training,
and the label metrics at the end of a run."""

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from helpers import TINY
from rsjax import cli
from rsjax import optim
from rsjax import state as state_lib
from rsjax.train import loop as train_loop
from rsjax.train import step as train_step
from rsjax.config import load_config
from rsjax.data import augment, pipeline
from rsjax.data.datasets import load_retrieval_data

REPO = pathlib.Path(__file__).resolve().parents[1]
RSSCN7_CONFIG = str(REPO / "configs" / "rsscn7_scratch.py")
COLOURS = {"field": (40, 160, 40), "lake": (30, 60, 200), "urban": (170, 170, 170)}


def write_label_set(root: pathlib.Path, train_per_class: int = 8, val_per_class: int = 4):
  """A captions.jsonl folder of coloured 32 px tiles with a label and no captions (RSSCN7 layout)."""
  rng = np.random.default_rng(0)
  lines = []
  for label, colour in COLOURS.items():
    (root / "images" / label).mkdir(parents=True)
    for i in range(train_per_class + val_per_class):
      pixels = np.clip(np.array(colour) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
      name = f"images/{label}/{i}.png"
      Image.fromarray(pixels).save(root / name)
      lines.append({"image": name, "captions": [], "label": label,
                    "split": "train" if i < train_per_class else "val"})
  (root / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
  return root


def label_overrides(path, *overrides) -> list[str]:
  """configs/rsscn7_scratch.py shrunk to TINY's model sizes and pointed at `path`."""
  tiny = [o for o in TINY if o.split("=")[0].startswith(("model.", "train.", "eval.batch"))]
  return tiny + [f"data.path={path}", "data.image_size=32", "model.image.patch_size=8",
                 "model.image.stem=patch", "model.hashing.bits=16", "train.hash_prefix_bits=(8,)",
                 "train.batch_size=16", "eval.batch_size=16", *overrides]


def label_config(path, *overrides):
  return load_config(RSSCN7_CONFIG + ":pyramid=0", label_overrides(path, *overrides))


def test_label_prompts_become_captions_and_labels(tmp_path):
  root = write_label_set(tmp_path / "set")
  config = label_config(root)
  data = load_retrieval_data(config, str(tmp_path / "work"))
  templates = config.data.label_prompt
  assert data.class_names == ("field", "lake", "urban")
  assert data.train_tokens.shape[:2] == (24, len(templates))  # one caption per template
  np.testing.assert_array_equal(data.train_labels, np.repeat([0, 1, 2], 8))
  val = data.eval_splits["val"]
  assert len(val.captions) == 12 * len(templates)
  assert val.captions[0] == templates[0].format(label="field")
  np.testing.assert_array_equal(val.labels["scene"], np.repeat([0, 1, 2], 4 * len(templates)))
  assert data.train_dihedral


def test_turns_refused_for_captions_with_directions(tmp_path):
  root = write_label_set(tmp_path / "set")
  config = label_config(root, "data.label_prompt=('{label} on the left side',)")
  with pytest.raises(ValueError, match="memory_dihedral.*'field on the left side'"):
    load_retrieval_data(config, str(tmp_path / "work"))
  config = label_config(root, "data.label_prompt=('an image of fields',)")
  with pytest.raises(ValueError, match="has no '{label}'"):
    load_retrieval_data(config, str(tmp_path / "work"))


def test_pipeline_carries_labels_and_turns_images():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (10, 6, 6, 3), dtype=np.uint8)
  tokens = np.arange(1, 11, dtype=np.int32).reshape(10, 1, 1)  # token = 1 + image index
  labels = np.arange(10, dtype=np.int32) % 3
  it = pipeline.train_iterator(images, tokens, 5, seed=0, labels=labels, dihedral=True)
  variants = [augment.Dihedral(f, k) for f in (False, True) for k in range(4)]
  seen = set()
  for _ in range(8):
    batch = next(it)
    for image, tok, label in zip(batch["image"], batch["tokens"][:, 0], batch["label"]):
      source = images[tok - 1]
      assert label == labels[tok - 1]
      matches = [i for i, v in enumerate(variants) if np.array_equal(v.apply_image(source), image)]
      assert matches, "a batch image is none of the 8 flips / turns of its source"
      seen.update(matches)
  assert len(seen) >= 6  # the turns are drawn, not fixed
  plain = next(pipeline.train_iterator(images, tokens, 5, seed=0))
  assert "label" not in plain


def test_label_positives_train_and_report_label_metrics(tmp_path, capsys):
  root = write_label_set(tmp_path / "set")
  overrides = ("train.steps=4", "train.checkpoint_every=4", "eval.at_step0=False")
  config = label_config(root, *overrides)
  workdir = tmp_path / "run"
  results = train_loop.train(config, str(workdir))
  labels = results["labels"]
  assert set(labels) == {"zero_shot_top1", "t2i_map", "i2i_map@20_dense", "i2i_map@20_16bit"}
  assert all(0.0 <= v <= 100.0 for v in labels.values())
  saved = json.loads((workdir / "eval.json").read_text())
  assert saved["labels"] == labels
  # `rsjax eval` on the same checkpoint gives the same figures, and hashing by class
  sets = [x for o in label_overrides(root, *overrides) for x in ("--set", o)]
  assert cli.main(["eval", "--config", RSSCN7_CONFIG + ":pyramid=0", "--workdir", str(workdir),
                   "--splits", "val", *sets, "--robustness", "--robustness-corruptions",
                   "cloud", "--robustness-severities", "5"]) == 0
  full = json.loads((workdir / "eval_full.json").read_text())["splits"]["val"]
  assert full["labels"] == pytest.approx(labels)
  # Under --robustness a label set is also scored by class: zero-shot, prompt mAP, full codes.
  robust = full["robustness"]
  label_keys = {"zero_shot_top1", "t2i_map", "i2i_map@20_16bit"}
  assert robust["clean"] == pytest.approx(
      {"mR": full["retrieval"]["mR"], **{k: labels[k] for k in label_keys},
       **{f"hash_{d}_map@20": full["hashing"]["pairing"][d]["map@20"] for d in ("i2t", "t2i")}})
  assert set(robust["scores"]["cloud"]["5"]) == set(robust["clean"])
  assert robust["scores"]["cloud"]["5"] != robust["clean"]  # heavy cloud changes the scores
  assert set(full["hashing"]["label"]) == {"i2t", "t2i"}  # hashing by class, DUCH split
  assert "val, relevance by class (percent): zero-shot top-1" in capsys.readouterr().out


def test_label_positives_need_labels(tmp_path):
  from helpers import tiny_config
  config = tiny_config("train.positives=label")
  with pytest.raises(ValueError, match="'train.positives' is 'label' but the train split has no"):
    train_loop.train(config, str(tmp_path / "run"))


def test_hash_positives_need_labels(tmp_path):
  from helpers import tiny_config
  config = tiny_config("model.hashing.bits=16", "train.hash_positives=label")
  with pytest.raises(ValueError, match="'train.hash_positives' is 'label' but the train split"):
    train_loop.train(config, str(tmp_path / "run"))
  with pytest.raises(ValueError, match="'train.hash_positives': unknown 'class'"):
    train_loop.train(tiny_config("model.hashing.bits=16", "train.hash_positives=class"),
                str(tmp_path / "run2"))


def _first_step_metrics(batch, *overrides) -> dict:
  """The metrics of one train step of a 16-bit tiny model from seed 0 on `batch`."""
  import jax

  from helpers import tiny_config
  from rsjax import parallel

  config = tiny_config("model.hashing.bits=16", "train.loss_sharding=auto", *overrides)
  mesh = parallel.make_mesh(config, jax.devices()[:1])
  model, tx = state_lib.create_model(config), optim.make_optimizer(config.train)
  state, shardings = state_lib.init_state(model, tx, config, mesh, jax.random.key(0))
  step = train_step.compile_train_step(train_step.make_train_step(model, tx, config, mesh),
                                       shardings, mesh)
  with jax.set_mesh(mesh):
    _, m = step(state, parallel.shard_batch(batch, mesh))
  return {k: float(v) for k, v in jax.device_get(m).items()}


def test_hash_positives_set_apart_from_the_contrastive_ones():
  """train.hash_positives changes the hashing similarity only: with pairwise contrastive positives
  and hashing by class, the contrastive loss is the pairwise run's and the hashing likelihood the
  by-class run's, from the same weights on the same batch."""
  from helpers import random_batches

  batch = {**random_batches(seed=0, count=1)[0], "label": np.arange(16, dtype=np.int32) % 3}
  pairs = _first_step_metrics(batch, "train.positives=pair")
  classes = _first_step_metrics(batch, "train.positives=label")
  mixed = _first_step_metrics(batch, "train.positives=pair", "train.hash_positives=label")
  assert mixed["contrastive_loss"] == pytest.approx(pairs["contrastive_loss"], rel=1e-6)
  assert mixed["hash_similarity"] == pytest.approx(classes["hash_similarity"], rel=1e-6)
  assert abs(mixed["hash_similarity"] - pairs["hash_similarity"]) > 1e-3


def test_caption_positives_match_rows_of_the_same_caption_text():
  """train.positives=caption: rows whose token ids are equal (three captions repeated over 16
  rows, as "no change" repeats over change pairs) are positives, exactly as labels naming the
  caption would make them; in the contrastive and in the hashing loss."""
  from helpers import random_batches

  batch = random_batches(seed=0, count=1)[0]
  batch["tokens"] = batch["tokens"][np.arange(16) % 3]
  by_label = {**batch, "label": np.arange(16, dtype=np.int32) % 3}
  labels = _first_step_metrics(by_label, "train.positives=label")
  captions = _first_step_metrics(batch, "train.positives=caption")
  pairs = _first_step_metrics(batch, "train.positives=pair")
  for key in ("contrastive_loss", "hash_similarity", "grad_norm"):
    assert captions[key] == pytest.approx(labels[key], rel=1e-5), key
  # (Identical texts have identical logits, so the loss value equals the pairwise one; its
  # gradient does not.)
  assert abs(captions["grad_norm"] - pairs["grad_norm"]) > 1e-2 * pairs["grad_norm"]
  moved = batch["tokens"].copy()
  moved[3, 1] += 1  # row 3 is no longer row 0's text: a group of its own
  own = np.arange(16) % 3
  own[3] = 3
  same = train_step.positives_matrix("caption", {"tokens": moved})
  assert (np.asarray(same) == (own[:, None] == own[None, :])).all()
  with pytest.raises(ValueError, match="'train.positives': unknown 'text' \\(use pair, label, "
                     "caption\\)"):
    _first_step_metrics(batch, "train.positives=text")


def test_rsscn7_recipe_loads_the_real_set(shared_data, tmp_path):
  config = load_config(RSSCN7_CONFIG + ":runlocal",
                       [f"data.path={shared_data / 'rsscn7'}", "data.image_size=32"])
  data = load_retrieval_data(config, str(tmp_path))
  assert data.class_names == ("field", "forest", "grass", "industry", "parking", "resident",
                              "riverlake")
  assert data.train_images.shape == (1792, 32, 32, 3)
  assert np.bincount(data.train_labels).tolist() == [256] * 7
  val = data.eval_splits["val"]
  assert val.images.shape[0] == 448
  assert np.bincount(val.labels["scene"][::len(config.data.label_prompt)]).tolist() == [64] * 7
