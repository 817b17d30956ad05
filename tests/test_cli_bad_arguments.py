"""Every `rsjax` subcommand refuses bad arguments the same way (rsjax/errors.py): exit 2 for a bad
path, argument, config or input file (argparse's own usage errors included), exit 1 for a runtime
failure; never a traceback, never "internal error", and the last line on stderr that starts
with "rsjax" (followed at most by its indented list) names the offending path, key or argument.

Nothing here trains a model: each row fails before any compile-heavy work. An index of another
model needs two trained checkpoints; tests/test_eval_cli.py refuses it on the trained run there."""

import types

import numpy as np
import pytest

from helpers import SMOKE, cli_sets
from rsjax import cli

TINY_SETS = cli_sets()


@pytest.fixture
def p(tmp_path):
  """Files and folders the rows point at: foreign files, empty folders, half-made runs."""
  from PIL import Image

  def write(name, data):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return str(path)

  png_path = tmp_path / "picture.png"
  Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(png_path)
  png = png_path.read_bytes()
  ns = types.SimpleNamespace(tmp=str(tmp_path), png=str(png_path),
                             missing=str(tmp_path / "missing"))
  ns.text = write("notes.txt", "hello world\n")
  ns.empty = str(tmp_path / "empty")
  (tmp_path / "empty").mkdir()
  ns.nonempty = write("full/notes.txt", "x")[: -len("/notes.txt")]
  ns.garbage_py = write("garbage.py", "this is not python (\n")
  ns.png_py = write("picture_config.py", png)
  ns.png_cfg = write("picture_config.png", png)
  ns.images = write("images/a.png", png)[: -len("/a.png")]
  # A run folder with a (fake) tokenizer and an empty checkpoints/ folder: no model in it.
  ns.run = write("run/tokenizer.model", "not a sentencepiece model")[: -len("/tokenizer.model")]
  (tmp_path / "run" / "checkpoints").mkdir()
  ns.tar_text = write("shard.tar", "hello, not a tar\n" * 64)
  ns.parquet_text = write("meta.parquet", "hello, not parquet\n")
  ns.pt_text = write("weights.pt", "hello, not a pickle\n")
  ns.st_text = write("weights.safetensors", '{"a": 1}')
  from safetensors.numpy import save_file
  ns.st_nonclip = str(tmp_path / "tiny.safetensors")
  save_file({"x": np.zeros(2, np.float32)}, ns.st_nonclip)
  ns.bad_metrics = write("badrun/metrics.jsonl", '{"step": 1, "loss": 2.0}\nnot json\n')[
      : -len("/metrics.jsonl")]
  ns.good_run = write("goodrun/metrics.jsonl", '{"step": 1, "loss": 2.0}\n')[
      : -len("/metrics.jsonl")]
  ns.png_eval = write("pngrun/eval.json", png)[: -len("/eval.json")]
  ns.bad_converted = write("conv/converted.json", "{not json")[: -len("/converted.json")]
  ns.not_prepared = str(tmp_path / "prepared")
  (tmp_path / "prepared" / "myset" / "1.0.0").mkdir(parents=True)
  ns.progress_text = write("corpus/progress.json", "[1, 2]")[: -len("/progress.json")]
  return ns


def _smoke(*args):
  """The smoke config shrunk to TINY, then `args` (later --set items win over TINY's)."""
  return ["--config", SMOKE, *TINY_SETS, *args]


# id: (argv from the fixture's paths, exit code, words the last stderr line must hold)
ROWS = {
    # train
    "train: no --workdir (argparse)": (lambda p: ["train", "--config", SMOKE], 2, ["--workdir"]),
    "train: config file missing": (lambda p: ["train", "--config", p.missing + ".py",
                                              "--workdir", p.empty], 2, ["missing.py"]),
    "train: text file as config": (lambda p: ["train", "--config", p.garbage_py,
                                              "--workdir", p.empty], 2, ["garbage.py"]),
    "train: PNG as config (.py)": (lambda p: ["train", "--config", p.png_py,
                                              "--workdir", p.empty], 2, ["picture_config.py"]),
    "train: PNG as config (.png)": (lambda p: ["train", "--config", p.png_cfg,
                                               "--workdir", p.empty], 2, ["picture_config.png"]),
    "train: --set batch_size=-1": (lambda p: ["train", *_smoke("--workdir", p.empty,
                                                               "--set", "train.batch_size=-1")],
                                   2, ["train.batch_size"]),
    "train: --set with a wrong type": (lambda p: ["train", *_smoke("--workdir", p.empty, "--set",
                                                                   "train.steps=abc")],
                                       2, ["train.steps", "abc"]),
    "train: --set without =": (lambda p: ["train", *_smoke("--workdir", p.empty, "--set",
                                                           "train.steps")], 2, ["train.steps"]),
    "train: workdir is a file": (lambda p: ["train", *_smoke("--workdir", p.text)],
                                 2, ["notes.txt"]),
    # eval
    "eval: --zero-shot-limit abc (argparse)": (lambda p: ["eval", *_smoke(
        "--workdir", p.empty, "--zero-shot-limit", "abc")], 2, ["--zero-shot-limit", "abc"]),
    "eval: text file as config": (lambda p: ["eval", "--config", p.garbage_py, "--workdir",
                                             p.empty], 2, ["garbage.py"]),
    "eval: unknown evaluator": (lambda p: ["eval", *_smoke(
        "--workdir", p.empty, "--set", "eval.evaluators=('retrieval','labls')")],
        2, ["eval.evaluators", "labls"]),
    "eval: empty workdir (no checkpoint)": (lambda p: ["eval", *_smoke("--workdir", p.empty)],
                                            2, ["{empty}"]),
    "eval: text file as checkpoint": (lambda p: ["eval", *_smoke("--workdir", p.empty,
                                                                 "--checkpoint", p.text)],
                                      2, ["notes.txt"]),
    # index
    "index: --batch-size abc (argparse)": (lambda p: ["index", *_smoke(
        "--checkpoint", p.run, "--images", p.images, "--out", p.missing, "--batch-size", "abc")],
        2, ["--batch-size", "abc"]),
    "index: --chunk-size 0": (lambda p: ["index", *_smoke(
        "--checkpoint", p.run, "--images", p.images, "--out", p.missing, "--chunk-size", "0")],
        2, ["--chunk-size"]),
    "index: --batch-size -1": (lambda p: ["index", *_smoke(
        "--checkpoint", p.run, "--images", p.images, "--out", p.missing, "--batch-size", "-1")],
        2, ["--batch-size"]),
    "index: images folder missing": (lambda p: ["index", *_smoke(
        "--checkpoint", p.run, "--images", p.missing, "--out", p.tmp + "/idx")], 2, ["{missing}"]),
    "index: images folder empty": (lambda p: ["index", *_smoke(
        "--checkpoint", p.run, "--images", p.empty, "--out", p.tmp + "/idx")], 2, ["{empty}"]),
    "index: no tokenizer beside the checkpoint": (lambda p: ["index", *_smoke(
        "--checkpoint", p.empty, "--images", p.images, "--out", p.tmp + "/idx")],
        2, ["tokenizer"]),
    "index: run without a checkpoint": (lambda p: ["index", *_smoke(
        "--checkpoint", p.run, "--images", p.images, "--out", p.tmp + "/idx")], 2, ["{run}"]),
    "index: --out is a file": (lambda p: ["index", *_smoke(
        "--checkpoint", p.run, "--images", p.images, "--out", p.text)], 2, ["notes.txt"]),
    # search
    "search: --k abc (argparse)": (lambda p: ["search", p.empty, "a port", "--k", "abc"],
                                   2, ["--k", "abc"]),
    "search: --k 0": (lambda p: ["search", p.empty, "a port", "--k", "0"], 2, ["--k"]),
    "search: --rerank -1": (lambda p: ["search", p.empty, "a port", "--binary", "--rerank", "-1"],
                            2, ["--rerank"]),
    "search: empty query": (lambda p: ["search", p.empty, "  "], 2, ["query"]),
    "search: index folder missing": (lambda p: ["search", p.missing, "a port"], 2, ["{missing}"]),
    "search: empty folder as index": (lambda p: ["search", p.empty, "a port"], 2, ["{empty}"]),
    "search: text file as index": (lambda p: ["search", p.text, "a port"], 2, ["notes.txt"]),
    "search: run folder as index": (lambda p: ["search", p.run, "a port"], 2, ["{run}"]),
    # serve
    "serve: --port abc (argparse)": (lambda p: ["serve", p.empty, "--port", "abc"],
                                     2, ["--port", "abc"]),
    "serve: --port 70000": (lambda p: ["serve", p.empty, "--port", "70000"], 2, ["--port"]),
    "serve: index folder missing": (lambda p: ["serve", p.missing], 2, ["{missing}"]),
    "serve: empty folder as index": (lambda p: ["serve", p.empty], 2, ["{empty}"]),
    "serve: run folder as index": (lambda p: ["serve", p.run], 2, ["{run}"]),
    # report
    "explain: image missing": (lambda p: ["explain", p.empty, p.missing, "a port"], 2,
                               ["{missing}"]),
    "explain: run folder missing": (lambda p: ["explain", p.missing, p.png, "a port"], 2,
                                    ["{missing}", "no checkpoint"]),
    "explain: empty run folder": (lambda p: ["explain", p.empty, p.png, "a port"], 2,
                                  ["{empty}", "no checkpoint"]),
    "report: run folder missing": (lambda p: ["report", p.missing], 2, ["{missing}"]),
    "report: empty run folder": (lambda p: ["report", p.empty], 2, ["{empty}"]),
    "report: text file as run folder": (lambda p: ["report", p.text], 2, ["notes.txt"]),
    "report: metrics.jsonl with a bad line": (lambda p: ["report", p.bad_metrics],
                                              2, ["metrics.jsonl:2"]),
    "report: PNG as eval.json": (lambda p: ["report", p.png_eval], 2, ["eval.json"]),
    "report: --out is a file": (lambda p: ["report", p.good_run, "--out", p.text],
                                2, ["notes.txt"]),
    # data prepare
    "data prepare: no --data-dir (argparse)": (lambda p: ["data", "prepare", "rsicd",
                                                          "--manual-dir", p.empty],
                                               2, ["--data-dir"]),
    "data prepare: manual dir missing": (lambda p: ["data", "prepare", "rsicd", "--manual-dir",
                                                    p.missing, "--data-dir", p.tmp + "/out"],
                                         2, ["--manual-dir", "{missing}"]),
    "data prepare: manual dir empty": (lambda p: ["data", "prepare", "rsicd", "--manual-dir",
                                                  p.empty, "--data-dir", p.tmp + "/out"],
                                       2, ["--manual-dir", "{empty}"]),
    "data prepare: unknown data set": (lambda p: ["data", "prepare", "no_such_set", "--manual-dir",
                                                  p.images, "--data-dir", p.tmp + "/out"],
                                       2, ["no_such_set"]),
    "data prepare: annotations missing": (lambda p: ["data", "prepare", "captions_jsonl",
                                                     "--manual-dir", p.images,
                                                     "--data-dir", p.tmp + "/out"],
                                          2, ["{images}"]),
    # data tokenizer
    "data tokenizer: --vocab-size abc (argparse)": (lambda p: ["data", "tokenizer", "myset",
                                                               "--data-dir", p.empty,
                                                               "--vocab-size", "abc"],
                                                    2, ["--vocab-size", "abc"]),
    "data tokenizer: no prepared set": (lambda p: ["data", "tokenizer", "myset", "--data-dir",
                                                   p.empty], 2, ["myset"]),
    "data tokenizer: folder that is not a prepared set": (
        lambda p: ["data", "tokenizer", "myset", "--data-dir", p.not_prepared], 2, ["myset"]),
    # data convert
    "data convert: unknown kind (argparse)": (lambda p: ["data", "convert", "zip", p.text,
                                                         "--out", p.missing], 2, ["zip"]),
    "data convert: --shard-size abc (argparse)": (lambda p: ["data", "convert", "webdataset",
                                                             p.tar_text, "--out", p.missing,
                                                             "--shard-size", "abc"],
                                                  2, ["--shard-size", "abc"]),
    "data convert: --shard-size 0": (lambda p: ["data", "convert", "webdataset", p.tar_text,
                                                "--out", p.missing, "--shard-size", "0"],
                                     2, ["--shard-size"]),
    "data convert: tar missing": (lambda p: ["data", "convert", "webdataset", p.missing + ".tar",
                                             "--out", p.tmp + "/c"], 2, ["missing.tar"]),
    "data convert: text file as tar": (lambda p: ["data", "convert", "webdataset", p.tar_text,
                                                  "--out", p.tmp + "/c"], 2, ["shard.tar"]),
    "data convert: text file as parquet": (lambda p: ["data", "convert", "parquet",
                                                      p.parquet_text, "--out", p.tmp + "/c"],
                                           2, ["meta.parquet"]),
    "data convert: --out is a file": (lambda p: ["data", "convert", "webdataset", p.tar_text,
                                                 "--out", p.text], 2, ["notes.txt"]),
    "data convert: --out holds a foreign progress.json": (
        lambda p: ["data", "convert", "webdataset", p.tar_text, "--out", p.progress_text],
        2, ["progress.json"]),
    # convert
    "convert: no --out (argparse)": (lambda p: ["convert", "--checkpoint", p.pt_text],
                                     2, ["--out"]),
    "convert: checkpoint missing": (lambda p: ["convert", "--checkpoint", p.missing + ".pt",
                                               "--out", p.tmp + "/o"], 2, ["missing.pt"]),
    "convert: folder as checkpoint": (lambda p: ["convert", "--checkpoint", p.empty,
                                                 "--out", p.tmp + "/o"], 2, ["{empty}"]),
    "convert: text file as .pt": (lambda p: ["convert", "--checkpoint", p.pt_text,
                                             "--out", p.tmp + "/o"], 2, ["weights.pt"]),
    "convert: text file as .safetensors": (lambda p: ["convert", "--checkpoint", p.st_text,
                                                      "--out", p.tmp + "/o"],
                                           2, ["weights.safetensors"]),
    "convert: --out not empty": (lambda p: ["convert", "--checkpoint", p.st_nonclip,
                                            "--out", p.nonempty], 2, ["{nonempty}"]),
    "convert: --out is a file": (lambda p: ["convert", "--checkpoint", p.st_nonclip,
                                            "--out", p.text], 2, ["notes.txt"]),
    "convert: unknown --arch": (lambda p: ["convert", "--checkpoint", p.st_nonclip, "--arch",
                                           "ViT-Q-99", "--out", p.tmp + "/o"], 2, ["ViT-Q-99"]),
    "convert: state dict that is not CLIP": (lambda p: ["convert", "--checkpoint", p.st_nonclip,
                                                        "--out", p.tmp + "/o"],
                                             2, ["visual.conv1.weight"]),
    # export
    "export: unknown --format (argparse)": (lambda p: ["export", "--format", "onnx", "--out",
                                                       p.tmp + "/w.safetensors", "--converted",
                                                       p.empty], 2, ["--format", "onnx"]),
    "export: neither --workdir nor --converted": (lambda p: ["export", "--format", "open_clip",
                                                             "--out", p.tmp + "/w.safetensors"],
                                                  2, ["--workdir", "--converted"]),
    "export: --workdir without --config": (lambda p: ["export", "--format", "open_clip", "--out",
                                                      p.tmp + "/w.safetensors", "--workdir",
                                                      p.run], 2, ["--config"]),
    "export: --workdir is a file": (lambda p: ["export", "--format", "open_clip", "--out",
                                               p.tmp + "/w.safetensors", "--config", SMOKE,
                                               "--workdir", p.text], 2, ["notes.txt"]),
    "export: run without a checkpoint": (lambda p: ["export", "--format", "open_clip", "--out",
                                                    p.tmp + "/w.safetensors", "--workdir", p.run,
                                                    *_smoke()], 2, ["{run}"]),
    "export: --out with an unknown extension": (lambda p: ["export", "--format", "open_clip",
                                                           "--out", p.tmp + "/w.txt",
                                                           "--converted", p.empty],
                                                2, ["w.txt", ".safetensors"]),
    "export: empty folder as --converted": (lambda p: ["export", "--format", "open_clip", "--out",
                                                       p.tmp + "/w.safetensors", "--converted",
                                                       p.empty], 2, ["{empty}"]),
    "export: --converted with a broken converted.json": (
        lambda p: ["export", "--format", "open_clip", "--out", p.tmp + "/w.safetensors",
                   "--converted", p.bad_converted], 2, ["converted.json"]),
    # plan
    "plan: no --mesh (argparse)": (lambda p: ["plan", "--config", SMOKE], 2, ["--mesh"]),
    "plan: unknown --chip (argparse)": (lambda p: ["plan", *_smoke("--mesh", "1,1,1", "--chip",
                                                                   "v9")], 2, ["--chip", "v9"]),
    "plan: --mfu abc (argparse)": (lambda p: ["plan", *_smoke("--mesh", "1,1,1", "--mfu", "abc")],
                                   2, ["--mfu", "abc"]),
    "plan: --mesh 2,x,1": (lambda p: ["plan", *_smoke("--mesh", "2,x,1")], 2, ["--mesh", "2,x,1"]),
    "plan: --mesh 0,1,1": (lambda p: ["plan", *_smoke("--mesh", "0,1,1")], 2, ["--mesh"]),
    "plan: --mfu 2": (lambda p: ["plan", *_smoke("--mesh", "1,1,1", "--mfu", "2")], 2, ["--mfu"]),
    "plan: heads not divisible by the tensor axis": (
        lambda p: ["plan", *_smoke("--mesh", "1,1,2", "--set", "model.image.heads=3",
                                   "--set", "model.image.width=96")], 2, ["model.image.heads"]),
    "plan: text file as config": (lambda p: ["plan", "--config", p.garbage_py, "--mesh", "1,1,1"],
                                  2, ["garbage.py"]),
    "plan: unknown config key": (lambda p: ["plan", *_smoke("--mesh", "1,1,1", "--set",
                                                            "model.widht=3")], 2, ["model.widht"]),
}


def test_every_subcommand_is_in_the_table():
  """A new subcommand (or `rsjax data` action) gets rows here."""
  parser = cli.build_parser()
  sub = next(a for a in parser._actions if a.dest == "command")
  data = next(a for a in sub.choices["data"]._actions if a.dest == "action")
  commands = set(sub.choices) - {"data"} | {f"data {a}" for a in data.choices}
  covered = {name.split(":")[0] for name in ROWS}
  assert commands == covered, commands ^ covered


@pytest.mark.parametrize("argv_of, code, words", [
    pytest.param(*row, id=name) if not hasattr(row, "values") else
    pytest.param(*row.values, id=name, marks=row.marks) for name, row in ROWS.items()])
def test_bad_argument_is_refused_in_one_named_line(argv_of, code, words, p, capsys, monkeypatch):
  monkeypatch.delenv("RSJAX_DEBUG", raising=False)
  argv = argv_of(p)
  try:
    got = cli.main(argv)
  except SystemExit as e:  # argparse refuses before the command runs
    got = e.code
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.strip()]
  assert lines, f"nothing on stderr for {argv}"
  # The error is the last line that starts with "rsjax"; what follows it may only be its own
  # indented list (every offending key or record, rsjax/errors.py).
  heads = [i for i, line in enumerate(lines) if line.startswith("rsjax")]
  assert heads, err
  listing = lines[heads[-1] + 1:]
  assert all(line.startswith("  ") for line in listing), err
  last = "\n".join(lines[heads[-1]:])
  assert "Traceback" not in err and "internal error" not in err, err
  for word in words:
    word = word.format(**vars(p))
    assert word in last, (word, err)
  assert got == code, err

