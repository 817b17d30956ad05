"""Change retrieval on RS-Synth's temporal splits: the demo's dual encoder as the trunk of a change
encoder (rsjax/models/temporal.py) over before/after pairs, trained with caption positives (pairs
that share "no change"-like captions are not negatives of each other) and the change / no-change
head, evaluated by the `change` evaluator (recalls by caption text for all, changed, unchanged
pairs and per change type; no-change accuracy; BLEU-4 / CIDEr-D of the retrieved captions).

  rsjax train --config configs/rs_synth_change.py --workdir runs/change
  rsjax train --config configs/rs_synth_change.py:fusion=late_fusion --workdir runs/change_late
  rsjax train --config configs/rs_synth_change.py:runlocal --workdir /tmp/change_check

Args: fusion=tokens|late_fusion|second_image (default tokens), detector=pixels|pooled (pixels),
dates=N (2), steps=N,
runlocal (a seconds-long check on small splits).
"""

from rsjax.config import config_module, parse_arg
from rsjax.models.temporal import default_temporal_config


def get_config(arg=None):
  args = parse_arg(arg)
  c = config_module("smoke.py", __file__).get_config()
  c.data = dict(name="rs_synth_change", seed=0, image_size=64, num_train=8000, num_val=500,
                num_test=1000, dates=int(args.get("dates", 2)), no_change=0.5, cache_dir="")
  c.model.temporal = default_temporal_config()
  # detector: the change / no-change head on the pixels of both dates (a change of a few pixels
  # is lost in the trunk's stride-16 tokens; rsjax/models/change_detector.py).
  c.model.temporal.update(fusion=args.get("fusion", "tokens"), dates=int(args.get("dates", 2)),
                          heads=c.model.image.heads, detector=args.get("detector", "pixels"))
  # Caption positives need the whole [B, B] logits; on several devices XLA shards them.
  c.train.update(steps=int(args.get("steps", 1000)), positives="caption", loss_sharding="auto")
  c.eval.update(evaluators=("retrieval", "change"), at_step0=False)
  if "runlocal" in args:
    c.data.update(num_train=128, num_val=16, num_test=32)
    c.train.update(steps=int(args.get("steps", 4)), batch_size=16, warmup_steps=1, log_every=1,
                   checkpoint_every=4)
    c.eval.batch_size = 16
  return c
