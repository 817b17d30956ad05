"""Training on change sets: date sequences and their 'changed' flags through the in-memory
pipeline (the same flip / turn for every date), and the change loss of the train step; then the
trained change encoder's eval gallery and report, and a pair index with its search and bad pairs."""

import os

import numpy as np
import pytest

from change_runs import CHANGE_CONFIG, PAIRS, index_command, write_pairs
from rsjax.data import augment, pipeline


DIHEDRAL = [augment.Dihedral(flip, turns) for flip in (False, True) for turns in range(4)]


def sequences(n=8, dates=2, size=8):
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (n, dates, size, size, 3), dtype=np.uint8)


def test_sequences_and_extras_reach_the_batch_and_every_date_turns_alike():
  seqs = sequences()
  tokens = np.arange(8 * 2 * 5, dtype=np.int32).reshape(8, 2, 5) + 1
  changed = np.array([True, False] * 4)
  ds = pipeline.train_dataset(seqs, tokens, batch_size=4, seed=0, dihedral=True,
                              extras={"changed": changed})
  batch = ds[0]
  assert batch["image"].shape == (4, 2, 8, 8, 3) and batch["changed"].shape == (4,)
  for image, flag in zip(batch["image"], batch["changed"]):
    # which record, and which of the 8 transforms: the one that maps its first date to this
    matches = [(i, t) for i in range(8) for t in DIHEDRAL
               if np.array_equal(t.apply_image(seqs[i, 0]), image[0])]
    assert len(matches) == 1
    i, t = matches[0]
    assert np.array_equal(t.apply_image(seqs[i]), image)  # the second date: the same transform
    assert flag == changed[i]


def test_a_sequence_transform_equals_each_date_alone():
  seqs = sequences(n=1, dates=3)[0]
  for t in DIHEDRAL:
    assert np.array_equal(t.apply_image(seqs), np.stack([t.apply_image(d) for d in seqs]))


def test_a_change_encoder_trains_on_pairs_and_reports_change_retrieval(change_run):
  import json

  results, workdir, _ = change_run
  change = results["change"]
  assert {"all", "changed", "unchanged"} <= set(change["recalls"])
  assert set(change["detection"]) == {"accuracy", "changed_recall", "unchanged_recall", "balanced"}
  assert set(change["captioning"]["all"]) == {"bleu4", "cider_d"}
  assert {"all", "changed", "unchanged"} <= set(change["hashing_recalls"])   # the pair codes
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert all(r["change_loss"] > 0 for r in rows if "loss" in r)


def test_eval_and_report_draw_before_after_sequences_with_change_maps(change_run, capsys):
  import json

  from PIL import Image

  from rsjax import cli

  _, workdir, overrides = change_run
  sets = [x for o in overrides for x in ("--set", o)]
  assert cli.main(["eval", "--config", CHANGE_CONFIG, *sets, "--workdir", workdir,
                   "--splits", "test"]) == 0
  gallery = np.load(os.path.join(workdir, "eval_gallery.npz"))
  q, top = gallery["captions"].shape[0], gallery["images"].shape[1]
  assert gallery["images"].shape == (q, top, 2, 32, 32, 3)       # [Q, top, T, H, W, 3]
  assert gallery["maps"].shape == (q, top, 32, 32)              # where the change matched
  full = json.load(open(os.path.join(workdir, "eval_full.json")))
  assert full["efficiency"]["flops_per_image"] > 0             # per before/after pair
  assert cli.main(["report", workdir]) == 0
  md = open(os.path.join(workdir, "report", "report.md")).read()
  assert "top before/after sequences" in md
  with Image.open(os.path.join(workdir, "report", "gallery_0_0.png")) as png:
    width, height = png.size
  assert width > 2.9 * height                 # before, after and the map, side by side
  capsys.readouterr()


def test_a_change_encoder_refuses_single_images(tmp_path):
  import pytest

  from helpers import tiny_config
  from rsjax.errors import ConfigError
  from rsjax.models.temporal import default_temporal_config
  from rsjax.train import loop as train_loop

  config = tiny_config()
  with config.unlocked():
    config.model.temporal = default_temporal_config()
  with pytest.raises(ConfigError, match="'model.temporal': a change encoder takes date sequences"):
    train_loop.train(config, str(tmp_path / "run"))


def test_a_pair_index_searches_pairs_the_same_after_reload(change_run, pair_index, capsys):
  import json

  from rsjax import cli, index, parallel, runs, search_inputs

  _, workdir, _ = change_run
  out, before, after = pair_index
  idx = index.load(out)
  assert len(idx) == PAIRS and idx.pairs and idx.paths[2] == (os.path.join(before, "002.png"),
                                                              os.path.join(after, "002.png"))
  # The rows are the change encoder's embeddings of the pairs, in file order.
  config = runs.run_config(workdir)
  mesh = parallel.make_mesh(config)
  model, params, _ = runs.load_model(config, workdir, mesh)
  from rsjax.pixels import normalize_images
  dates = np.stack([search_inputs.load_pair(p, 32) for p in idx.paths])
  want = model.apply({"params": params}, normalize_images(dates), method=model.encode_image)
  np.testing.assert_allclose(np.asarray(idx.dense, np.float32), np.asarray(want), atol=2e-3)

  query = ["search", out, "two buildings were built", "no change", "--k", "3", "--json"]
  assert cli.main(query) == 0
  first = json.loads(capsys.readouterr().out)
  assert all(set(h) == {"rank", "score", "before", "after"} for r in first for h in r["results"])
  assert cli.main(query) == 0                       # a fresh process's view: reloaded from disk
  assert json.loads(capsys.readouterr().out) == first
  assert cli.main(query[:-1]) == 0                  # the table: "rank score before -> after"
  rows = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
  assert len(rows) == PAIRS and all(f"{before}/" in r and f" -> {after}/" in r for r in rows)


def test_bad_pairs_are_named_or_skipped(change_run, tmp_path, capsys):
  from PIL import Image

  from rsjax import cli

  before, after = write_pairs(tmp_path, n=3)
  base = index_command(change_run)
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(os.path.join(after, "lonely.png"))
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(os.path.join(before, "odd.png"))
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(os.path.join(after, "odd.png"))

  def refused(argv, *words):
    assert cli.main(argv) == 2, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words) and "Traceback" not in err[0], err

  out = str(tmp_path / "index")
  refused([*base, "--pairs", before, after, "--out", out], "pair lonely.png", "no before image")
  os.remove(os.path.join(after, "lonely.png"))
  refused([*base, "--pairs", before, after, "--out", out], "odd.png", "differ in size", "before 40x40")
  refused([*base, "--pairs", before, str(tmp_path / "nowhere"), "--out", out], "nowhere")
  refused([*base, "--images", after, "--out", out], "change encoder", "--pairs")
  refused([*base, "--out", out], "--images DIR or --pairs")
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(os.path.join(after, "lonely.png"))
  assert cli.main([*base, "--pairs", before, after, "--out", out, "--skip-bad"]) == 0
  captured = capsys.readouterr()
  assert "3 pairs added" in captured.out and "2 bad pair(s) skipped" in captured.out
  assert "lonely.png" in captured.out and "odd.png" in captured.out   # listed, left out


def test_a_pair_run_resumes_bit_identically(change_run, tmp_path):
  """Crashed after step 3 (last checkpoint: step 2) and resumed: the session's change run (the
  same config, uninterrupted) to the bit, its logged losses included."""
  import json

  import jax

  from helpers import final_state
  from rsjax.config import load_config
  from rsjax.train import loop as train_loop

  _, straight, overrides = change_run
  config = load_config(CHANGE_CONFIG, overrides)

  def final(workdir):
    step, params = final_state(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      logged = [(r["step"], r["loss"], r["change_loss"]) for r in map(json.loads, f) if "loss" in r]
    return step, params, logged

  resumed = str(tmp_path / "resumed")
  with pytest.raises(RuntimeError, match="simulated crash after step 3"):
    train_loop.train(config, resumed, crash_after_step=3)
  train_loop.train(config, resumed)
  (step_a, params_a, log_a), (step_b, params_b, log_b) = final(straight), final(resumed)
  assert step_a == step_b == 4 and log_a == log_b and len(log_a) == 4
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
    np.testing.assert_array_equal(a, b)   # the fusion, detector, change head and both towers
