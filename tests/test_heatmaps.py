"""Word–region heat maps (rsjax/evaluation/heatmaps.py), `rsjax explain` and the gallery's maps, on
a tiny run trained for two steps."""

import numpy as np
import pytest
from flax import traverse_util
from flax.core import meta

from helpers import tiny_config
from rsjax import cli, parallel, runs
from rsjax.evaluation import gallery, heatmaps
from rsjax.train.loop import train

PYRAMID = ("model.image.pyramid.enabled=True", "model.image.pyramid.taps=(0, 0)",
           "model.image.pyramid.strides=(4, 16)")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  train(tiny_config("train.steps=2", "eval.at_step0=False"), workdir)
  return workdir


@pytest.fixture(scope="module")
def loaded(run_dir):
  config = runs.run_config(run_dir)
  mesh = parallel.make_mesh(config)
  model, params, _ = runs.load_model(config, run_dir, mesh)
  from rsjax.data.tokenizers import SentencePieceTokenizer
  return model, params, mesh, SentencePieceTokenizer(runs.tokenizer_path(run_dir))


def _images(n, size=32):
  from rsjax.data.rs_synth import SynthSpec, render_example
  spec = SynthSpec(seed=3, image_size=size, num_train=1, num_val=1, num_test=n)
  return np.stack([render_example(spec, "test", i)[0] for i in range(n)])


def _shapes(tree):
  return sorted((k, v.shape) for k, v in traverse_util.flatten_dict(meta.unbox(tree), sep="/").items())


@pytest.mark.parametrize("extra", [(), PYRAMID], ids=["plain", "pyramid"])
def test_region_and_token_outputs_add_no_parameters(extra):
  import jax
  from rsjax import state

  model = state.create_model(tiny_config(*extra))
  images = np.asarray(_images(2), np.float32) / 127.5 - 1
  ids = np.zeros((2, 24), np.int32)
  ids[:, :4] = [7, 9, 11, 3]
  key = jax.random.key(0)
  init = lambda *a, **k: jax.eval_shape(lambda: model.init(key, *a, **k))["params"]  # shapes only
  full = meta.unbox(init(images, ids))
  regions = init(images, method=model.image_regions)
  tokens = init(ids, method=model.text_tokens)
  assert _shapes(regions) == [kv for kv in _shapes(full) if kv[0].startswith("image/")]
  assert _shapes(tokens) == [kv for kv in _shapes(full) if kv[0].startswith("text/")]
  # The outputs' shapes (the values are checked against a NumPy reference below).
  out = jax.eval_shape(lambda p: model.apply({"params": p}, images, method=model.image_regions),
                       full)
  assert out["embedding"].shape == (2, 16)
  assert out["patches"].shape == (2, 4, 4, 16)  # 32 px / patch 8, embed_dim 16
  if extra:
    assert {s: r.shape for s, r in out["regions"].items()} == {4: (2, 8, 8, 16), 16: (2, 2, 2, 16)}
  else:
    assert "regions" not in out
  text = jax.eval_shape(lambda p: model.apply({"params": p}, ids, method=model.text_tokens), full)
  assert text["tokens"].shape == (2, 24, 16)


def _bilinear(maps, size):
  """NumPy reference: [N, h, w] -> [N, H, W], half-pixel centres, edges held."""
  def axis(n_in, n_out):
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, pos - lo
  (r0, r1, fr), (c0, c1, fc) = axis(maps.shape[1], size[0]), axis(maps.shape[2], size[1])
  rows = maps[:, r0] * (1 - fr)[None, :, None] + maps[:, r1] * fr[None, :, None]
  return rows[:, :, c0] * (1 - fc) + rows[:, :, c1] * fc


def test_whole_query_map_equals_a_numpy_reference_and_has_the_image_shape(loaded):
  model, params, mesh, tok = loaded
  images = _images(3)
  ids = tok.encode(["two planes on a runway", "a lake", "cars"], 24)
  maps, scores = heatmaps.MapMaker(model, params, mesh, 8, "cosine").query_maps(images, ids)
  assert maps.shape == (3, 32, 32) and maps.dtype == np.float32

  # The definition by hand: each patch token through ln_post and proj, cosine with the pooled
  # text embedding, bilinear onto the pixels.
  from rsjax.pixels import normalize_images
  import jax
  image = jax.jit(lambda p, x: model.apply({"params": p}, normalize_images(x),
                                           method=lambda m, y: m.image(y)))(params, images)
  x = np.asarray(image["tokens"], np.float64)  # [3, 16, D]
  ln = params["image"]["ln_post"]["LayerNorm_0"]
  x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
  x = x * np.asarray(ln["scale"]) + np.asarray(ln["bias"])
  patches = x @ np.asarray(params["image"]["proj"]["proj"]["kernel"], np.float64)
  text = np.asarray(jax.jit(lambda p, t: model.apply({"params": p}, t,
                                                    method=lambda m, u: m.text(u)["embedding"]))(
                                                        params, ids))
  cos = np.einsum("nre,ne->nr", patches / np.linalg.norm(patches, axis=-1, keepdims=True),
                  text / np.linalg.norm(text, axis=-1, keepdims=True))
  reference = _bilinear(cos.reshape(3, 4, 4), (32, 32))
  np.testing.assert_allclose(maps, reference, atol=2e-5)
  pooled = np.asarray(image["embedding"])
  np.testing.assert_allclose(scores, np.sum(heatmaps.unit(pooled) * heatmaps.unit(text), -1),
                             atol=1e-5)
  # The reference can tell: a map flipped left-right no longer matches it.
  assert np.abs(maps[:, :, ::-1] - reference).max() > 1e-3
  # Occlusion (the default) scores the same pooled embeddings: the same scores.
  occluded, same = heatmaps.MapMaker(model, params, mesh, 8).query_maps(images, ids)
  assert occluded.shape == (3, 32, 32)
  np.testing.assert_allclose(same, scores, atol=1e-5)
  with pytest.raises(ValueError, match="method"):
    heatmaps.MapMaker(model, params, mesh, 8, "saliency")


def test_upsample_puts_a_patch_value_at_its_centre():
  grid = np.arange(4, dtype=np.float32).reshape(1, 2, 2)
  up = heatmaps.upsample(grid, (8, 8))
  assert up.shape == (1, 8, 8)
  np.testing.assert_allclose(up, _bilinear(grid, (8, 8)), atol=1e-6)
  assert up[0, 0, 0] == 0.0 and up[0, 7, 7] == 3.0  # edges held, not extrapolated


def test_sentencepiece_words_map_to_their_tokens(loaded):
  *_, tok = loaded
  from rsjax.data.tokenizers import EOS, PAD

  text = "two storage tanks beside a runway"
  ids = tok.encode([text], 24)[0]
  spans = tok.words(ids)
  assert [w for w, _ in spans] == text.split()
  used = [p for _, positions in spans for p in positions]
  assert used == list(range(len(used)))  # every piece of the text in order, once
  assert ids[len(used)] == EOS and all(i == PAD for i in ids[len(used) + 1:])
  for word, positions in spans:
    assert tok.decode(ids[positions][None])[0].strip() == word
  vectors = np.random.default_rng(0).normal(size=(24, 5))
  summed = heatmaps.word_vectors(vectors, spans)
  np.testing.assert_allclose(summed[-1], vectors[spans[-1][1]].sum(0))
  assert heatmaps.word_vectors(vectors, []).shape == (0, 5)


def test_clip_words_skip_start_end_and_padding():
  from rsjax.data.clip_tokenizer import ClipTokenizer

  tok = ClipTokenizer()
  ids = tok.encode(["Two airplanes, parked!"], 16)[0]
  spans = tok.words(ids)
  assert [w for w, _ in spans] == ["two", "airplanes", ",", "parked", "!"]
  used = [p for _, positions in spans for p in positions]
  assert used == list(range(1, len(used) + 1))  # position 0 is <start_of_text>
  assert ids[len(used) + 1] == tok.end_id


@pytest.mark.parametrize("method", heatmaps.METHODS)
def test_explanation_words_and_gallery_maps(loaded, method):
  model, params, mesh, tok = loaded
  maker = heatmaps.MapMaker(model, params, mesh, 8, method)
  images = _images(6)
  ids = tok.encode(["two planes", "a lake with ships"], 24)
  ex = maker.explain(images[0], "a lake with ships", ids[1], tok)
  assert [w for w, _ in ex.words] == ["a", "lake", "with", "ships"]
  assert all(m.shape == (32, 32) for _, m in ex.words) and ex.query.shape == (32, 32)
  maps, _ = maker.query_maps(images[:1], ids[1:])
  np.testing.assert_allclose(ex.query, maps[0], atol=1e-6)
  assert maker.explain(images[0], "x", ids[1]).words == []
  assert (ex.levels == {}) == (method == "occlusion")  # per-level maps: the cosine method's
  # The gallery: each query's map on each of its top images, [Q, top, H, W].
  top = images.reshape(2, 3, 32, 32, 3)
  per_query = gallery.query_maps(maker, top, ids)
  assert per_query.shape == (2, 3, 32, 32) and per_query.dtype == np.float16
  alone, _ = maker.query_maps(top[1], np.repeat(ids[1:], 3, 0))
  np.testing.assert_allclose(per_query[1], alone, atol=2e-3)  # float16


def test_explain_writes_a_png_and_refuses_bad_input_in_one_line(run_dir, tmp_path, capsys):
  from PIL import Image

  image = tmp_path / "tile.png"
  Image.fromarray(_images(1, size=48)[0]).save(image)  # resized to the model's 32 px
  out = tmp_path / "map.png"
  assert cli.main(["explain", run_dir, str(image), "two planes on a runway", "--out", str(out),
                   "--words"]) == 0
  assert "wrote" in capsys.readouterr().out
  with Image.open(out) as png:
    wide = png.size
  assert cli.main(["explain", run_dir, str(image), "two planes on a runway", "--out",
                   str(tmp_path / "query.png")]) == 0
  with Image.open(tmp_path / "query.png") as png:
    assert png.size[0] < wide[0]  # without --words: the image and the whole-query map only
  assert cli.main(["explain", run_dir, str(image), "two planes", "--method", "cosine", "--out",
                   str(tmp_path / "cosine.png"), "--window", "4"]) == 0
  assert (tmp_path / "cosine.png").stat().st_size > 0
  capsys.readouterr()
  assert cli.main(["explain", run_dir, str(image), " ".join(["planes"] * 40), "--out",
                   str(tmp_path / "long.png")]) == 0
  assert "longer than the model reads" in capsys.readouterr().err  # 24 tokens read, 41 given

  corrupt = tmp_path / "corrupt.png"
  corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
  empty = tmp_path / "empty_run"
  empty.mkdir()
  bad = {"empty text": ([run_dir, image, "  "], "text is empty"),
         "missing image": ([run_dir, tmp_path / "nope.png", "planes"], "nope.png"),
         "corrupt image": ([run_dir, corrupt, "planes"], "corrupt.png"),
         "missing checkpoint": ([tmp_path / "no_run", image, "planes"], "no_run"),
         "run without checkpoints": ([empty, image, "planes"], "empty_run"),
         "out folder": ([run_dir, image, "planes", "--out", tmp_path], "is a folder"),
         "window too big": ([run_dir, image, "planes", "--window", "999"], "--window 999"),
         "stride zero": ([run_dir, image, "planes", "--stride", "0"], "--stride 0")}
  for name, (argv, words) in bad.items():
    assert cli.main(["explain", *map(str, argv)]) == 2, name
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "Traceback" not in err[0], (name, err)
