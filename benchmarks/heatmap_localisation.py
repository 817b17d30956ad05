"""Do heat maps land on the object a query names? Both methods of rsjax/evaluation/heatmaps.py.

The lone-object images and the small classifier of tests/lone_objects.py (five classes, one group
of objects per image on grassland). Each test image's whole-query map for its class prompt is
compared with the objects' boxes, each grown by one pixel:

  inside_above_outside  fraction of images whose mean map inside the boxes exceeds the mean outside
  mean_difference       mean over images of (mean inside - mean outside)
  peak_inside           fraction of images whose map peaks inside the boxes
  box_area              the boxes' mean share of the image (peak_inside's chance level)

for the trained and the untrained model, per method (cosine; occlusion at a few window / stride
sizes, in pixels; the 8 x 8 patch grid), per seed, with each model's test accuracy. Prints a
markdown table and writes the same rows to benchmarks/results/heatmap_localisation.json. About a minute per seed on a 2-core CPU.

  .venv/bin/python benchmarks/heatmap_localisation.py [--steps 600] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

from benchmarks.common import report  # noqa: E402

OCCLUSION = ((8, 8), (8, 4), (16, 8))   # (window, stride) in pixels


def test_accuracy(maker, test_x, test_y, prompts) -> float:
  """Share of test images whose class prompt scores highest (chance 0.2)."""
  import numpy as np
  scores = maker.embed_images(test_x) @ maker.tokens(prompts)[0].T
  return round(float(np.mean(np.argmax(scores, 1) == test_y)), 4)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--test-images", type=int, default=48)
  args = parser.parse_args()

  from lone_objects import images, localisation_scores, train_classifier
  from rsjax.evaluation import heatmaps

  rows = []
  test_x, test_y, test_boxes = images(2, args.test_images)
  for seed in (int(s) for s in args.seeds.split(",")):
    start = time.time()
    trained = train_classifier(args.steps, seed)
    print(f"seed {seed}: trained {args.steps} steps in {time.time() - start:.0f} s, final loss "
          f"{trained.final_loss:.3f} (chance 1.609)", flush=True)
    queries = trained.prompts[test_y]
    for name, params in (("trained", trained.params), ("untrained", trained.untrained)):
      accuracy = test_accuracy(heatmaps.MapMaker(trained.model, params, trained.mesh, 64),
                               test_x, test_y, trained.prompts)
      makers = [("cosine", heatmaps.MapMaker(trained.model, params, trained.mesh, 64, "cosine"))]
      makers += [(f"occlusion w{w} s{s}",
                  heatmaps.MapMaker(trained.model, params, trained.mesh, 64, "occlusion", w, s))
                 for w, s in OCCLUSION]
      for method, maker in makers:
        maps, _ = maker.query_maps(test_x, queries)
        rows.append({"model": name, "method": method, "seed": seed,
                     "final_loss": round(trained.final_loss, 4), "test_accuracy": accuracy,
                     **{k: round(v, 4) for k, v in localisation_scores(maps, test_boxes).items()}})
  print(f"wrote {report(rows, __file__, {'steps': args.steps, 'test_images': args.test_images})}")


if __name__ == "__main__":
  main()
