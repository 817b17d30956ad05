"""Change retrieval on LEVIR-CC (data.name="levir_cc_change", rsjax/data/levir_change.py): the
change encoder of configs/rs_synth_change.py (rsjax/models/temporal.py) on LEVIR-CC's before/after
pairs and their five captions each, evaluated by the `change` evaluator on the test split (val is
loaded too, for eval.every).

  rsjax train --config configs/levir_cc_change.py:path=/data/Levir-CC-dataset --workdir runs/levir
  rsjax train --config \\
    configs/levir_cc_change.py:path=/data/mci/Data,format=levir_mci,image_root=/data/mci/dataset \\
      --workdir runs/levir_mci
  rsjax train --config configs/levir_cc_change.py:path=/data/Levir-CC-dataset,res=256,steps=5000 \\
      --workdir runs/levir_256          # LEVIR-CC's own size, on an accelerator

Without the real images, RS-Synth's temporal pairs written in the LEVIR-CC layout stand in for
them (rsjax/data/levir_layout.py; the same reader and checks):

  python -m rsjax.data.levir_layout --out /tmp/levir_synth --num-train 512 --num-val 64 \\
      --num-test 128 --image-size 64
  rsjax train --config configs/levir_cc_change.py:path=/tmp/levir_synth,runlocal \\
      --workdir /tmp/levir_check        # seconds: subsets of 128 / 16 / 32 pairs, 4 steps
  rsjax train --config configs/levir_cc_change.py:path=/tmp/levir_synth --workdir runs/levir_synth

Args: path=DIR or FILE (LevirCCcaptions.json or its folder; LEVIR-MCI: the folder of
train.txt / val.txt / test.txt and tokens/), image_root=DIR ("" = beside the annotations),
format=levir_cc|levir_mci (default levir_cc), fusion=tokens|late_fusion|second_image (default
tokens), detector=pixels|pooled (default pixels, as configs/rs_synth_change.py), steps=N (1000),
res=N (64: LEVIR-CC's images are 256 px, resized to 64 so that a CPU trains in minutes; use 128
or 256 on an accelerator), runlocal (a seconds-long check).
Bad pairs stop the run with each named; --set data.skip_bad_records=True skips and lists them.
"""

from rsjax.config import config_module, parse_arg
from rsjax.models.temporal import default_temporal_config


def get_config(arg=None):
  args = parse_arg(arg)
  c = config_module("smoke.py", __file__).get_config()
  c.data = dict(name="levir_cc_change", format=args.get("format", "levir_cc"),
                path=args.get("path", "data/Levir-CC-dataset"),
                image_root=args.get("image_root", ""), image_size=int(args.get("res", 64)),
                train_split="train", eval_splits=("val", "test"),
                num_train=0, num_val=0, num_test=0,  # 0: every pair; N: a random subset
                seed=0, skip_bad_records=False, tokenizer_path="")
  # LEVIR-CC's sentences run to about 30 words, longer than RS-Synth's.
  c.model.text.context_length = 32
  c.model.temporal = default_temporal_config()
  c.model.temporal.update(fusion=args.get("fusion", "tokens"), dates=2, heads=c.model.image.heads,
                          detector=args.get("detector", "pixels"))
  # Caption positives need the whole [B, B] logits (about half of LEVIR-CC's pairs share
  # no-change captions); on several devices XLA shards them.
  c.train.update(steps=int(args.get("steps", 1000)), positives="caption", loss_sharding="auto")
  c.eval.update(split="test", evaluators=("retrieval", "change"), at_step0=False)
  if "runlocal" in args:
    c.data.update(num_train=128, num_val=16, num_test=32)
    c.train.update(steps=int(args.get("steps", 4)), batch_size=16, warmup_steps=1, log_every=1,
                   checkpoint_every=4)
    c.eval.batch_size = 16
  return c
