"""Train on an annotated image-text set read straight from its files (data.name="annotated").

Default: the 53 real RSICD images of ../shared/data/rsicd_samples (45 train, 8 test; no val split,
so periodic val evaluation is off). Any captions.jsonl folder or Karpathy dataset.json works:

  rsjax train --config configs/annotated.py --workdir runs/rsicd_samples
  rsjax train --config configs/annotated.py:path=/data/ucm/dataset.json,format=karpathy \\
      --set data.image_root=/data/ucm/imgs --workdir runs/ucm

The data keys are documented in rsjax/data/annotated.py. The model is the smoke config's.
"""

import os

from rsjax.config import config_module, parse_arg

SMOKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "smoke.py")


def _smoke_config():
  return config_module("smoke.py", __file__).get_config()


def _default_path() -> str:
  shared = os.environ.get("RSJAX_SHARED_DATA",
                          os.path.join(os.path.dirname(SMOKE), "..", "..", "shared", "data"))
  return os.path.normpath(os.path.join(shared, "rsicd_samples"))


def get_config(arg=None):
  args = parse_arg(arg)
  c = _smoke_config()
  c.data = dict(
      name="annotated",
      path=args.get("path", _default_path()),
      format=args.get("format", "captions_jsonl"),
      image_root="",
      caption_field="captions",
      label_prompt="",
      image_size=int(args.get("res", 64)),
      bands=(),
      max_value=0.0,
      train_split="train",
      skip_bad_records=False,
      tokenizer_path="",
      # True: augmented batches through grain (keys as in configs/prepared.py); False: in memory.
      stream=False,
      augment=dict(crop_scale_min=0.5, dihedral=True, color_jitter=0.0),
      num_workers=0,
      prefetch=4,
  )
  c.train.steps = int(args.get("steps", 200))
  c.train.batch_size = int(args.get("batch", 32))
  c.train.warmup_steps = 20
  c.train.checkpoint_every = 100
  c.train.log_every = 20
  c.eval.update(split="test", batch_size=64, every=0)
  return c
