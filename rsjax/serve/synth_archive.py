"""An RS-Synth split written out as an image archive: PNG files and a captions.jsonl, so that
`rsjax index` and `rsjax serve` can be tried on the demo's own data (`make serve`).

  python -m rsjax.serve.synth_archive --config configs/smoke.py --split test --out DIR

The images come from the RS-Synth cache of the config's data section (generated when missing).
RS-Synth tiles have no place on Earth; each gets made-up `lon`/`lat` on a regular grid (0.01
degrees apart, starting at --origin), so that the page's bounding-box filter has something to
filter. Rerunning into a finished archive does nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

GRID_STEP = 0.01  # degrees between neighbouring made-up tile positions


def write_archive(config, split: str, out: str, origin=(10.0, 45.0)) -> int:
  """Writes out/images/<split>_NNNNN.png and out/captions.jsonl; returns the image count."""
  import math

  from PIL import Image

  from rsjax import atomic
  from rsjax.data import rs_synth
  from rsjax.errors import InputError

  d = config.data
  if d.name != "rs_synth":
    raise InputError(f"--config has data.name {d.name!r}; this writes RS-Synth splits only")
  spec = rs_synth.SynthSpec(seed=d.seed, image_size=d.image_size, num_train=d.num_train,
                            num_val=d.num_val, num_test=d.num_test)
  splits = rs_synth.load_or_generate(spec, d.cache_dir or None, progress=True)
  if split not in splits:
    raise InputError(f"--split {split!r}: RS-Synth has {', '.join(sorted(splits))}")
  images, recs = splits[split]
  listing = os.path.join(out, "captions.jsonl")
  if os.path.isfile(listing):
    with open(listing, encoding="utf-8") as f:
      if sum(1 for _ in f) == len(images):
        return len(images)
  os.makedirs(os.path.join(out, "images"), exist_ok=True)
  side = math.ceil(math.sqrt(len(images)))
  lines = []
  for n, (image, rec) in enumerate(zip(images, recs)):
    name = f"images/{split}_{n:05d}.png"
    Image.fromarray(image).save(os.path.join(out, name))
    lines.append(json.dumps({"image": name, "split": split, "captions": list(rec["captions"]),
                             "lon": round(origin[0] + (n % side) * GRID_STEP, 6),
                             "lat": round(origin[1] + (n // side) * GRID_STEP, 6)}))
  with atomic.atomic_file(listing) as tmp, open(tmp, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")  # last: a finished archive is one with its listing
  return len(images)


def main(argv=None) -> int:
  from rsjax.config import load_config

  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True, help="configs/NAME.py[:arg] with an RS-Synth data section")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  p.add_argument("--split", default="test")
  p.add_argument("--out", required=True)
  args = p.parse_args(argv)
  try:
    n = write_archive(load_config(args.config, args.set), args.split, args.out)
  except Exception as e:  # noqa: BLE001  one line, as the rsjax command line reports errors
    from rsjax import errors
    return errors.report(e, "synth_archive", sys.stderr)
  print(f"RS-Synth {args.split}: {n} images in {args.out} (captions.jsonl, images/)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
