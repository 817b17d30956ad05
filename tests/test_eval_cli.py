"""End to end on a tiny trained model with a hashing head: rsjax eval (per subset, hashing,
zero-shot on RSSCN7), rsjax index (real images, append), rsjax search (dense, binary, rerank,
sharded) and rsjax report."""

import json
import os

import numpy as np
import pytest

from helpers import cli_sets, tiny_config
from rsjax import cli, index, parallel, runs, search_inputs
from rsjax.evaluation import encode
from rsjax.train.loop import train

SETS = ("model.hashing.bits=32", "train.steps=4", "eval.at_step0=False")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  train(tiny_config(*SETS), workdir)
  return workdir


def rsjax(*args) -> int:
  return cli.main([str(a) for a in args])


def test_eval_writes_per_split_hashing_and_zero_shot(run_dir, shared_data, capsys):
  code = rsjax("eval", "--config", "configs/smoke.py", "--workdir", run_dir, *cli_sets(*SETS),
               "--splits", "test,val", "--zero-shot", shared_data / "rsscn7",
               "--zero-shot-split", "val", "--zero-shot-limit", 28)
  assert code == 0
  with open(os.path.join(run_dir, "eval_full.json")) as f:
    res = json.load(f)
  assert set(res["splits"]) == {"test", "val"}
  with open(os.path.join(run_dir, "eval.json")) as f:  # the trainer's own evaluation agrees
    trained = json.load(f)
  for key in ("i2t_r1", "t2i_r10", "mR"):
    assert res["splits"]["test"]["retrieval"][key] == pytest.approx(trained[key])
  hashing = res["splits"]["test"]["hashing"]
  assert hashing["bits"] == 32 and len(hashing["pairing"]["t2i"]["pr_curve"]["precision"]) == 33
  zs = res["zero_shot"]["rsscn7"]
  assert zs["num_images"] == 28 and zs["num_classes"] == 7 and 0 <= zs["top1"] <= 100
  gallery = np.load(os.path.join(run_dir, "eval_gallery.npz"))
  assert gallery["images"].shape[:2] == (4, 5) and gallery["hit"].dtype == bool
  assert gallery["maps"].shape == (4, 5, 32, 32)  # each result's whole-query heat map
  eff = res["efficiency"]  # the model's costs, measured on the first split
  assert eff["params"]["total"] == sum(eff["params"][k] for k in ("image", "text", "other"))
  assert eff["flops_per_image"] > eff["flops_per_caption"] > 0 and eff["images_per_s"] > 0
  assert eff["bytes_per_image"] == {"dense_float16": 32, "dense_float32": 64, "binary": 4}
  assert set(eff["query_ms"]) == {"dense", "binary"} and eff["num_images_searched"] == 16
  out = capsys.readouterr().out
  assert "| val |" in out and "efficiency on " in out
  assert rsjax("report", run_dir) == 0
  html = open(os.path.join(run_dir, "report", "report.html")).read()
  assert html.count("<img ") == 2 + 20  # curves, PR curves, 4 x 5 gallery
  assert "FLOPs per image" in html and "images/s on " in html


def test_index_search_append_and_refusals(run_dir, shared_data, tmp_path, capsys):
  base = ["--config", "configs/smoke.py", *cli_sets(*SETS), "--checkpoint", run_dir, "--quiet"]
  out = tmp_path / "idx"
  assert rsjax("index", *base, "--images", shared_data / "rsicd_samples", "--out", out) == 0
  assert rsjax("index", *base, "--images", shared_data / "ucm_captions_samples", "--out", out,
               "--append") == 0
  idx = index.load(str(out))
  assert len(idx) == 53 + 9 and idx.codes.shape == (62, 4) and idx.dense.dtype == np.float16
  # The stored vectors are the model's, for the images at the stored paths.
  config = tiny_config(*SETS)
  mesh = parallel.make_mesh(config)
  model, params, _ = runs.load_model(config, run_dir, mesh)
  enc_img, _ = encode.encoders(model)
  images = np.stack([search_inputs.load_image(p, 32) for p in idx.paths[50:56]])
  import jax
  with jax.set_mesh(mesh):
    emb = encode.encode_in_batches(enc_img, params, images, 8, mesh)
  np.testing.assert_allclose(idx.dense[50:56].astype(np.float32), emb, atol=2e-3)

  capsys.readouterr()
  results = {}
  for name, extra in {"dense": [], "binary": ["--binary"], "rerank": ["--binary", "--rerank", 30],
                      "sharded": ["--sharded"]}.items():
    assert rsjax("search", out, "two planes near a runway", "--k", 5, "--json", *extra) == 0
    results[name] = json.loads(capsys.readouterr().out)["results"]
    assert len(results[name]) == 5
  # Host BLAS and the devices' XLA matmul may differ in the last bit of a score.
  assert [r["path"] for r in results["dense"]] == [r["path"] for r in results["sharded"]]
  np.testing.assert_allclose([r["score"] for r in results["dense"]],
                             [r["score"] for r in results["sharded"]], rtol=1e-5)
  hamming = [r["hamming"] for r in results["binary"]]
  assert hamming == sorted(hamming)
  scores = [r["score"] for r in results["rerank"]]
  assert scores == sorted(scores, reverse=True)

  # An index whose recorded model differs from the checkpoint offered is not appended to.
  meta_file = out / "index.json"
  meta = json.loads(meta_file.read_text())
  meta["model"]["params_digest"] = "0" * 32
  meta_file.write_text(json.dumps(meta))
  code = rsjax("index", *base, "--images", shared_data / "ucm_captions_samples", "--out", out,
               "--append")
  assert code == 2 and "another model" in capsys.readouterr().err
  # A damaged index is refused by search with the file named.
  with open(out / "chunk_00001.dense.npy", "r+b") as f:
    f.seek(200)
    f.write(b"\x00\x01\x02")
  assert rsjax("search", out, "a lake") == 2
  assert "chunk_00001.dense.npy is corrupt" in capsys.readouterr().err


def test_interrupted_index_run_resumes_instead_of_restarting(run_dir, shared_data, tmp_path,
                                                             capsys, monkeypatch):
  base = ["--config", "configs/smoke.py", *cli_sets(*SETS), "--checkpoint", run_dir, "--quiet",
          "--images", shared_data / "rsicd_samples", "--chunk-size", 16]
  whole, resumed = tmp_path / "whole", tmp_path / "resumed"
  assert rsjax("index", *base, "--out", whole) == 0

  written = []
  real_write = index.write_chunk

  def killed_after_two_chunks(*args, **kwargs):
    if len(written) == 2:
      raise KeyboardInterrupt("killed while encoding the third chunk")
    written.append(args[2])
    return real_write(*args, **kwargs)

  monkeypatch.setattr(index, "write_chunk", killed_after_two_chunks)
  assert rsjax("index", *base, "--out", resumed) == 130  # Ctrl-C: one line, the usual exit code
  monkeypatch.setattr(index, "write_chunk", real_write)
  assert capsys.readouterr().err.strip().splitlines()[-1] == "rsjax index: interrupted"
  # The unfinished index is usable, says so, and is not mistaken for a finished one.
  assert rsjax("search", resumed, "a stadium", "--k", 3) == 0
  assert "unfinished (32 of 53 images)" in capsys.readouterr().err
  assert rsjax("index", *base[:-4], "--images", shared_data / "ucm_captions_samples", "--chunk-size",
               16, "--out", resumed) == 2
  assert "unfinished index run of another image list" in capsys.readouterr().err

  assert rsjax("index", *base, "--out", resumed) == 0  # the same command again
  out = capsys.readouterr().out
  assert "resuming an unfinished run of these 53 images at image 32" in out
  assert "21 images added, 53 in 4 chunk(s)" in out
  a, b = index.load(str(whole)), index.load(str(resumed))
  assert a.paths == b.paths and "building" not in b.meta
  np.testing.assert_array_equal(a.dense, b.dense)
  np.testing.assert_array_equal(a.codes, b.codes)


def test_empty_query_is_refused(run_dir, shared_data, tmp_path, capsys):
  out = tmp_path / "idx"
  assert rsjax("index", "--config", "configs/smoke.py", *cli_sets(*SETS), "--checkpoint", run_dir,
               "--quiet", "--images", shared_data / "ucm_captions_samples", "--out", out) == 0
  assert rsjax("search", out, "a lake", "  ") == 2
  assert "query 2 is empty" in capsys.readouterr().err


def test_query_batch_of_any_size_keeps_the_score_matrix_bounded(monkeypatch):
  """A query batch far larger than one score block is split; results equal the NumPy reference."""
  from rsjax import search
  rng = np.random.default_rng(0)
  db = rng.standard_normal((3000, 16)).astype(np.float32)
  queries = rng.standard_normal((700, 16)).astype(np.float32)
  monkeypatch.setattr(search, "DENSE_BLOCK_SCORES", 100 * 1000)
  monkeypatch.setattr(search, "MIN_BLOCK_ROWS", 1000)  # -> at most 100 queries x 1000 rows a block
  biggest = []
  real_select = search.kernels.dense_select_block
  monkeypatch.setattr(search.kernels, "dense_select_block",
                      lambda s, *a: (biggest.append(s.size), real_select(s, *a))[1])
  scores, rows = search.dense_topk(db, queries, 5)
  assert max(biggest) <= 100 * 1000
  full = queries @ db.T
  expected = np.argsort(-full, axis=1, kind="stable")[:, :5]
  np.testing.assert_array_equal(rows, expected)
  np.testing.assert_allclose(scores, np.take_along_axis(full, expected, 1), rtol=1e-5)


def _archive_with_defects(shared_data, folder):
  """A captions.jsonl archive of 6 RSICD images: one row repeated, one image truncated."""
  src = shared_data / "rsicd_samples"
  rows = [json.loads(line) for line in (src / "captions.jsonl").read_text().splitlines()][:6]
  (folder / "img").mkdir(parents=True)
  for r in rows:
    name = os.path.basename(r["image"])
    (folder / "img" / name).write_bytes((src / r["image"]).read_bytes())
    r["image"] = f"img/{name}"
  cut = folder / rows[2]["image"]
  cut.write_bytes(cut.read_bytes()[:300])
  rows.insert(4, dict(rows[1], captions=["the same image named again"]))
  (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return rows, cut


def test_index_skip_bad_leaves_out_corrupt_images_and_lists_each_image_once(
    run_dir, shared_data, tmp_path, capsys):
  rows, cut = _archive_with_defects(shared_data, tmp_path / "archive")
  base = ["--config", "configs/smoke.py", *cli_sets(*SETS), "--checkpoint", run_dir, "--quiet",
          "--images", tmp_path / "archive", "--chunk-size", 2, "--batch-size", 2]
  assert rsjax("index", *base, "--out", tmp_path / "stopped") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and str(cut) in err[0] and "--skip-bad" in err[0], err
  assert rsjax("index", *base, "--out", tmp_path / "skipped", "--skip-bad") == 0
  out = capsys.readouterr().out
  assert "CorruptImageError" in out and str(cut) in out and "1 bad image(s) skipped" in out
  idx = index.load(str(tmp_path / "skipped"))
  unique = list(dict.fromkeys(str(tmp_path / "archive" / r["image"]) for r in rows))
  assert idx.paths == [p for p in unique if p != str(cut)]  # 5 images, once each, in order


def test_long_query_is_searched_with_a_warning(run_dir, shared_data, tmp_path, capsys):
  out = tmp_path / "idx"
  assert rsjax("index", "--config", "configs/smoke.py", *cli_sets(*SETS), "--checkpoint",
               run_dir, "--images", shared_data / "rsicd_samples", "--out", out, "--quiet") == 0
  capsys.readouterr()
  long_query = " ".join(["many storage tanks near a harbour with ships"] * 12)
  assert rsjax("search", out, "a lake", long_query, "--k", 2) == 0
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "warning" in err[0] and "model.text.context_length" in err[0], err
  assert "many storage tanks" in err[0]


def test_index_of_an_archive_checks_only_its_image_names(run_dir, shared_data, tmp_path, capsys):
  rows, cut = _archive_with_defects(shared_data, tmp_path / "archive")
  rows = [dict(r, split="validation", captions=[3]) for r in rows if r["image"] != rows[2]["image"]]
  (tmp_path / "archive" / "captions.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
  base = ["--config", "configs/smoke.py", *cli_sets(*SETS), "--checkpoint", run_dir, "--quiet",
          "--images", tmp_path / "archive"]
  assert rsjax("index", *base, "--out", tmp_path / "a") == 2  # the broken line, named
  assert "captions.jsonl:7: not valid JSON" in capsys.readouterr().err
  assert rsjax("index", *base, "--out", tmp_path / "a", "--skip-bad") == 0
  assert len(index.load(str(tmp_path / "a"))) == 5  # splits and captions are not an index's
  for r in rows:
    (tmp_path / "archive" / r["image"]).write_bytes(b"broken")
  capsys.readouterr()
  assert rsjax("index", *base, "--out", tmp_path / "b", "--skip-bad") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert "no images to index: all 5 were bad (CorruptImageError 5; listed above)" in err[-1]
  assert not (tmp_path / "b" / "index.json").exists()  # no empty index is left behind


def test_eval_robustness_scores_each_corruption_and_severity(run_dir, capsys):
  from rsjax.evaluation.robustness import relative_drop

  base = ["eval", "--config", "configs/smoke.py", "--workdir", run_dir, *cli_sets(*SETS),
          "--splits", "test", "--robustness"]
  assert rsjax(*base, "--robustness-corruptions", "cloud,defocus_blur",
               "--robustness-severities", "1,5") == 0
  assert "| defocus_blur |" in capsys.readouterr().out
  with open(os.path.join(run_dir, "eval_full.json")) as f:
    split = json.load(f)["splits"]["test"]
  result = split["robustness"]
  # The clean scores are the split's own (the same encodings), the text side is never corrupted.
  assert result["clean"]["mR"] == pytest.approx(split["retrieval"]["mR"])
  assert result["clean"]["hash_t2i_map@20"] == pytest.approx(
      split["hashing"]["pairing"]["t2i"]["map@20"])
  assert set(result["scores"]) == {"cloud", "defocus_blur"}
  for name, per in result["scores"].items():
    assert set(per) == {"1", "5"}
    for key, clean in result["clean"].items():
      assert result["drop"][name][key] == pytest.approx(
          np.mean([relative_drop(clean, per[s][key]) for s in ("1", "5")]))
  cloud = result["scores"]["cloud"]
  assert cloud["5"] != cloud["1"] != result["clean"]  # the images were re-encoded, corrupted
  assert result["mean_drop"]["mR"] == pytest.approx(
      np.mean([result["drop"][n]["mR"] for n in ("cloud", "defocus_blur")]))
  # Bad names and severities are refused in one line, before any model is loaded.
  assert rsjax(*base, "--robustness-corruptions", "cloud,fog") == 2
  assert "unknown corruption(s) fog; valid: haze" in capsys.readouterr().err
  assert rsjax(*base, "--robustness-severities", "0,7") == 2
  assert "--robustness-severities: '0,7'" in capsys.readouterr().err
