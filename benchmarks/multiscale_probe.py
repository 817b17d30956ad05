"""Where a small object's signal is lost: a probe of trained runs on RS-Synth's small_objects pairs.

Each small_objects pair is an original image and a distractor that lacks some or all of one
group of objects of at most 4 pixels; everything else, sensor noise included, is identical. So
the difference of any feature between the two images is exactly the small objects' signal. For
every stage of the image tower this script measures that difference relative to the feature
itself, ||f(original) - f(distractor)|| / ||f(original)||, averaged over the pairs:

- "pixels": the input; "stem_sN": the conv stem's stride-N output; "tokens_sP": the trunk's
  output tokens (P: the patch size); "pyramid_sN": a pyramid level's map (resampled tokens, plus the pixel lateral
  where there is one); "embedding": the final image embedding (what retrieval compares);
- "gate": the pyramid's gate after training (0: the pyramid adds nothing).

A stage whose relative difference is far below the pixels' has averaged the objects away.

  .venv/bin/python benchmarks/multiscale_probe.py runs/multiscale/plain_1150_s0 \\
      runs/multiscale/pyramid_lateral_..._s0 [--pairs 200]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import report  # noqa: E402


def relative_difference(a, b) -> float:
  """Mean over the batch of ||a - b|| / ||a||, each [B, ...]."""
  a, b = (np.asarray(x, np.float64).reshape(len(x), -1) for x in (a, b))
  return float(np.mean(np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(a, axis=1), 1e-12)))


def stages(model, params, images) -> dict[str, np.ndarray]:
  """{stage: [B, ...]} of the image tower on normalised images [B, H, W, 3]."""
  out, state = model.apply({"params": params}, images, method=lambda m, x: m.image(x),
                           capture_intermediates=True)
  inter = state["intermediates"]["image"]
  found = {f"tokens_s{model.config.image.patch_size}": out["tokens"],
           "embedding": out["embedding"]}
  stride = 1
  for name in sorted(k for k in inter if k.startswith("stem_conv")):
    stride *= 2
    found[f"stem_s{stride}"] = inter[name]["__call__"][0]
  for s, fmap in out.get("maps", {}).items():
    found[f"pyramid_s{s}"] = fmap
  return found


def probe(workdir: str, pairs: int) -> list[dict]:
  import jax

  from rsjax import parallel, runs
  from rsjax.data import rs_synth
  from rsjax.pixels import normalize_images

  config = runs.run_config(workdir)
  mesh = parallel.make_mesh(config)
  model, params, step = runs.load_model(config, workdir, mesh)
  params = jax.device_get(params)
  data = config.data
  spec = rs_synth.ChallengeSpec(seed=data.seed, image_size=data.image_size,
                                num_examples=data.get("challenge_size", 500))
  arrays, records = rs_synth.load_or_generate_challenges(spec, data.cache_dir or None)["small_objects"]
  images = arrays["images"]
  originals = [i for i, r in enumerate(records) if r["role"] == "original"][:pairs]
  partner = {(r["pair"], r["role"]): i for i, r in enumerate(records)}
  distractors = [partner[(records[i]["pair"], "distractor")] for i in originals]
  rows = []
  diffs: dict[str, list[float]] = {}
  for start in range(0, len(originals), 50):
    a = normalize_images(images[originals[start:start + 50]])
    b = normalize_images(images[distractors[start:start + 50]])
    diffs.setdefault("pixels", []).append(relative_difference(a, b))
    fa, fb = stages(model, params, a), stages(model, params, b)
    for name in fa:
      diffs.setdefault(name, []).append(relative_difference(fa[name], fb[name]))
  pyramid = params["image"].get("pyramid")
  name = os.path.basename(os.path.normpath(workdir))
  for stage, values in diffs.items():
    rows.append({"run": name, "step": int(step), "stage": stage,
                 "relative_difference": float(np.mean(values)), "pairs": len(originals)})
  rows.append({"run": name, "step": int(step), "stage": "gate",
               "relative_difference": None if pyramid is None else float(pyramid["gate"]),
               "pairs": len(originals)})
  return rows


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("workdirs", nargs="+", help="trained runs of configs/smoke.py with data.challenges")
  p.add_argument("--pairs", type=int, default=200)
  args = p.parse_args()
  rows = [row for w in args.workdirs for row in probe(w, args.pairs)]
  print(f"wrote {report(rows, __file__)}")


if __name__ == "__main__":
  main()
