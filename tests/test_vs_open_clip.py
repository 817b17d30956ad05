"""benchmarks/vs_open_clip.py compares like with like: the rsjax and open_clip models it builds
have the same parameters, and from the same weights its two training steps (rsjax.train's
compiled step; open_clip's ClipLoss, torch AdamW with the decay mask rsjax uses, clip_grad_norm_,
logit-scale clamp) give the same losses and the same updated parameters on the same batches.

A two-layer model at 32 px on random data; two steps, the first at a learning rate of zero
(warmup from zero, as rsjax's schedule starts) and the second at the peak rate."""

import pathlib
import sys

import jax
import numpy as np
import pytest

from rsjax import convert
from torchvision_shim import import_open_clip

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import vs_open_clip as bench  # noqa: E402

VOCAB = 40  # pieces 1..38, 0 padding, 39 the end-of-text id (the largest, pooled by both)
BATCH, SIZE = 8, 32
# A large weight decay, so that decaying one tensor more or less than rsjax would show.
TRAIN = dict(learning_rate=1e-2, warmup_steps=1, weight_decay=0.5)


def _batches(n: int, length: int) -> list[dict]:
  rng = np.random.default_rng(0)
  out = []
  for _ in range(n):
    tokens = rng.integers(1, VOCAB - 1, (BATCH, length)).astype(np.int32)
    ends = rng.integers(2, length, BATCH)  # end-of-text somewhere, padding after it
    for row, end in enumerate(ends):
      tokens[row, end], tokens[row, end + 1:] = VOCAB - 1, 0
    out.append({"image": rng.integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8),
                "tokens": tokens})
  return out


def _random_weights(config) -> dict[str, np.ndarray]:
  """Random parameters of every rsjax tensor, none at a special value (so that weight decay
  shows on each), the temperature at CLIP's 1 / 0.07. Faster than compiling rsjax's init."""
  rng = np.random.default_rng(1)
  flat = {k: (0.05 * rng.standard_normal(shape)).astype(np.float32)
          for k, shape in convert.parameter_shapes(config.model, SIZE).items()}
  flat["head/logit_scale"] = np.asarray(np.log(1 / 0.07), np.float32)
  return flat


@pytest.fixture(scope="module")
def pair():
  """(config, rsjax trainer, open_clip trainer, initial flat params), same weights in both."""
  import_open_clip()  # the torchvision shim first
  config = bench.run_config(bench.model_config(VOCAB, tiny=True), SIZE, 2, BATCH, 0, **TRAIN)
  flat = _random_weights(config)
  state = convert.to_open_clip(flat, config.model)
  oc = bench.OpenClipTrainer(convert.open_clip_config(config.model, SIZE), state,
                             bench.decayed_keys(config, flat), dict(config.train))
  # The benchmark trains on one CPU device (conftest fakes eight).
  return config, bench.RsjaxTrainer(config, flat, jax.devices()[:1]), oc, flat


def test_same_architecture_and_decay_mask(pair):
  config, _, oc, flat = pair
  assert sum(v.size for v in flat.values()) == sum(p.numel() for p in oc.model.parameters())
  decayed = bench.decayed_keys(config, flat)  # asked of rsjax's optimizer itself
  assert {"visual.conv1.weight", "visual.transformer.resblocks.0.mlp.c_fc.weight",
          "token_embedding.weight", "text_projection"} <= set(decayed)
  assert not {"logit_scale", "visual.ln_pre.weight", "ln_final.bias",
              "visual.transformer.resblocks.0.mlp.c_fc.bias",
              "visual.transformer.resblocks.0.attn.in_proj_bias"} & set(decayed)


def test_same_losses_and_updates(pair):
  config, rs, oc, flat = pair
  lrs = bench.learning_rates(config)
  np.testing.assert_allclose(lrs, [0.0, TRAIN["learning_rate"]], rtol=1e-6)
  for i, batch in enumerate(_batches(2, config.model.text.context_length)):
    loss_rs, loss_oc = rs.step(batch), oc.step(batch, lrs[i])
    np.testing.assert_allclose(loss_rs, loss_oc, rtol=1e-4)
  got = convert.to_open_clip(rs.params(), config.model)
  want = oc.params()
  start = convert.to_open_clip(flat, config.model)
  moved = 0
  for key, value in want.items():
    if key == "attn_mask":
      continue
    # Adam moves each element by about lr, decay by lr * 0.5 * |p| ~ 1e-2 lr here; rounding
    # differences between the frameworks stay under 3e-4 lr (measured).
    np.testing.assert_allclose(got[key], value, rtol=0, atol=2e-3 * TRAIN["learning_rate"],
                               err_msg=key)
    moved += not np.array_equal(value, start[key])
  assert moved == len(start)  # every tensor was updated, so every update was compared


def test_same_embeddings(pair):
  config, rs, oc, _ = pair
  batch = _batches(1, config.model.text.context_length)[0]
  for ours, theirs, x in ((rs.encode_image, oc.encode_image, batch["image"]),
                          (rs.encode_text, oc.encode_text, batch["tokens"])):
    np.testing.assert_allclose(ours(x), theirs(x), rtol=0, atol=1e-4)


def test_summary_compares_each_rsjax_run_and_the_rounding_yardstick():
  """The table's ratios, the targets per rsjax run, and the rounding check: a quality gap below
  open_clip counts as within rounding only when the two rsjax runs differ by at least as much."""
  def row(fw, seed, step, zero_shot):
    return {"framework": fw, "seed": seed, "params_M": 8.0, "step_s": step,
            "encode_img_per_s": 100.0 / step, "pct_of_peak": 30.0 / step,
            "others_cpu_pct": 0.0, "zero_shot_top1": zero_shot, "i2i_map@20_dense": 50.0}
  rows = [row("rsjax", 0, 0.5, 44.0), row("rsjax", 1, 0.5, 46.0),
          row("open_clip", 0, 1.0, 45.5), row("open_clip", 1, 1.0, 45.5),
          row("rsjax_1dev", 0, 1.5, 45.2), row("rsjax_1dev", 1, 1.5, 45.2)]
  targets, within = bench.summarise(rows, {"torch": 2e11, "jax": 4e11})
  by_name = {r["framework"]: r for r in rows if r["seed"] in ("mean", "-")}
  assert by_name["rsjax / open_clip"]["step_s"] == pytest.approx(0.5)
  assert by_name["rsjax_1dev / open_clip"]["step_s"] == pytest.approx(1.5)
  assert by_name["rsjax_1dev - open_clip (points)"]["zero_shot_top1"] == pytest.approx(-0.3)
  assert by_name["rounding: rsjax - rsjax_1dev (points)"]["zero_shot_top1"] == pytest.approx(-0.2)
  assert by_name["matmul peak (torch)"]["pct_of_peak"] == pytest.approx(50.0)
  assert targets["rsjax: train step time <= 1.0x open_clip's"]
  assert not targets["rsjax_1dev: train step time <= 1.0x open_clip's"]
  assert targets["rsjax: train step >= 50% of the matmul peak"]  # 60%
  assert not targets["rsjax_1dev: train step >= 50% of the matmul peak"]  # 20%
  assert not targets["rsjax: zero_shot_top1 not below open_clip's"]  # 45.0 vs 45.5
  assert targets["rsjax: i2i_map@20_dense not below open_clip's"]  # equal
  # Gaps of -0.5 (rsjax) and -0.3 (rsjax_1dev) points against a rounding spread of 0.2.
  assert [ok for name, ok in within.items() if "zero_shot" in name] == [False, False]
  assert all(ok for name, ok in within.items() if "i2i" in name)
