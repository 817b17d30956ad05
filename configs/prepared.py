"""Train on a data set prepared with `rsjax data prepare` (data.name="tfds"), streamed by grain
with RS augmentations. The model is the smoke config's.

  rsjax data prepare rsicd_samples --manual-dir ../shared/data/rsicd_samples --data-dir data/
  rsjax data tokenizer rsicd_samples --data-dir data/ --vocab-size 512      # optional
  rsjax train --config configs/prepared.py:builder=rsicd_samples,data_dir=data/ --workdir runs/x

norm=dataset normalises images with the prepared set's per-channel mean / std (from its
metadata.json) instead of mapping pixels to [-1, 1].

The data keys are documented in rsjax/data/prepared.py.
"""


from rsjax.config import config_module, parse_arg



def _smoke_config():
  return config_module("smoke.py", __file__).get_config()


def get_config(arg=None):
  args = parse_arg(arg)
  c = _smoke_config()
  c.data = dict(
      name="tfds",
      data_dir=args.get("data_dir", "data"),
      builder=args.get("builder", "rsicd_samples"),
      version="",
      train_split="train",
      image_size=int(args.get("res", 64)),
      bands=(),
      max_value=0.0,
      label_prompt="",
      augment=dict(crop_scale_min=0.5, dihedral=True, color_jitter=0.0),
      num_workers=int(args.get("workers", 0)),
      prefetch=4,
      tokenizer_path="",
  )
  if args.get("norm") == "dataset":  # the prepared set's own per-channel mean / std
    from rsjax.data.prepared import dataset_normalization
    mean, std = dataset_normalization(c.data)
    c.model.image.update(input_norm="dataset", input_mean=mean, input_std=std)
  c.train.steps = int(args.get("steps", 200))
  c.train.batch_size = int(args.get("batch", 32))
  c.train.warmup_steps = 20
  c.train.checkpoint_every = 100
  c.train.log_every = 20
  c.eval.update(split="test", batch_size=64, every=0)
  return c
