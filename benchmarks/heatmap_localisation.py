"""Do word–region heat maps land on the object a query names? A check in under a minute on a CPU.

RS-Synth objects are drawn alone, one group per image: a large object, or up to four smaller ones,
of one of five classes, in a random grid cell on grassland, with no class context such as a runway
or water. A small dual encoder (the tests' TINY model at 64 px, patch 8: an 8 x 8 grid) is trained
to name the class from five one-token prompts (cross-entropy over the prompts). Each test image's
whole-query map for its class prompt (rsjax/evaluation/heatmaps.py) is then compared with the
objects' boxes, each grown by one pixel:

  inside_above_outside  fraction of images whose mean map inside the boxes exceeds the mean outside
  mean_difference       mean over images of (mean inside - mean outside), in cosine
  peak_inside           fraction of images whose map peaks inside the boxes
  box_area              the boxes' mean share of the image (peak_inside's chance level)

for the trained and the untrained model. Writes benchmarks/results/heatmap_localisation.json.

  .venv/bin/python benchmarks/heatmap_localisation.py [--steps 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

import numpy as np  # noqa: E402

CLASSES = ("plane", "ship", "car", "storage tank", "building")
SIZE, PROMPT_LENGTH = 64, 8


def lone_object(stream: int, index: int) -> tuple[np.ndarray, int, list[list[int]]]:
  """One image [SIZE, SIZE, 3] uint8, its class id and its objects' boxes [x0, y0, x1, y1]."""
  from rsjax.data import captions_grammar as grammar
  from rsjax.data.rs_synth.drawing import BACKGROUNDS, draw_object
  from rsjax.data.rs_synth.groups import (cell_box, describe_objects, inset, layout_group,
                                          object_length, sample_group)
  from rsjax.data.rs_synth.scenes import finish

  rng = np.random.default_rng([stream, index])
  img = BACKGROUNDS["grassland"](rng, SIZE)
  label = int(rng.integers(len(CLASSES)))
  position = grammar.POSITIONS[int(rng.integers(len(grammar.POSITIONS)))]
  group = sample_group(rng, CLASSES[label], position, "grassland", size="large")
  lengths = [object_length(rng, group["size"], SIZE) for _ in range(group["count"])]
  objs = layout_group(rng, group, lengths, inset(cell_box(position, SIZE), 0.5), 0, "grassland")
  for o in objs:
    draw_object(img, o, (0.6, 0.8))
  describe_objects(group, objs)
  return finish(img, rng), label, group["boxes"]


def images(stream: int, n: int):
  made = [lone_object(stream, i) for i in range(n)]
  return (np.stack([m[0] for m in made]), np.asarray([m[1] for m in made]),
          [m[2] for m in made])


def scores(maps: np.ndarray, boxes: list) -> dict:
  masks = np.zeros(maps.shape, bool)
  for k, bs in enumerate(boxes):
    for x0, y0, x1, y1 in bs:
      masks[k, max(0, y0 - 1): y1 + 2, max(0, x0 - 1): x1 + 2] = True
  diff = np.asarray([m[k].mean() - m[~k].mean() for m, k in zip(maps, masks)])
  peak = np.asarray([k.reshape(-1)[np.argmax(m)] for m, k in zip(maps, masks)])
  return {"inside_above_outside": float(np.mean(diff > 0)), "mean_difference": float(diff.mean()),
          "peak_inside": float(peak.mean()), "box_area": float(masks.mean())}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--test-images", type=int, default=48)
  args = parser.parse_args()

  import jax
  import optax

  from helpers import tiny_config
  from rsjax import parallel, state
  from rsjax.evaluation import heatmaps
  from rsjax.pixels import normalize_images

  start = time.time()
  train_x, train_y, _ = images(1, 512)
  test_x, test_y, test_boxes = images(2, args.test_images)
  config = tiny_config(f"data.image_size={SIZE}", "model.image.width=32", "model.text.width=32",
                       "model.embed_dim=32", f"model.text.context_length={PROMPT_LENGTH}",
                       "model.text.vocab_size=16")
  mesh = parallel.make_mesh(config)
  model = state.create_model(config)
  untrained = params = state.init_params(model, config, mesh, jax.random.key(args.seed))
  prompts = np.zeros((len(CLASSES), PROMPT_LENGTH), np.int32)
  prompts[:, 0] = 4 + np.arange(len(CLASSES))  # one token per class, then end-of-text (3)
  prompts[:, 1] = 3
  optimizer = optax.adam(3e-3)
  opt_state = optimizer.init(params)

  def loss_fn(p, x, y):
    img = model.apply({"params": p}, normalize_images(x), method=model.encode_image)
    txt = model.apply({"params": p}, prompts, method=model.encode_text)
    return optax.softmax_cross_entropy_with_integer_labels(10.0 * img @ txt.T, y).mean()

  @jax.jit
  def step(p, s, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
    updates, s = optimizer.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  rng = np.random.default_rng(args.seed)
  losses = []
  for _ in range(args.steps):
    batch = rng.integers(0, len(train_x), 32)
    params, opt_state, loss = step(params, opt_state, train_x[batch], train_y[batch])
    losses.append(float(loss))
  result = {"steps": args.steps, "seed": args.seed, "test_images": args.test_images,
            "final_loss": float(np.mean(losses[-20:])), "chance_loss": float(np.log(len(CLASSES)))}
  for name, p in (("trained", params), ("untrained", untrained)):
    maps, _ = heatmaps.MapMaker(model, p, mesh, args.test_images).query_maps(test_x,
                                                                             prompts[test_y])
    result[name] = scores(maps, test_boxes)
  result["seconds"] = round(time.time() - start, 1)
  out = os.path.join(REPO, "benchmarks", "results", "heatmap_localisation.json")
  with open(out, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result, indent=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
