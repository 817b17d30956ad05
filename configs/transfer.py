"""Transfer from a pretrained dual encoder the way RS users adapt CLIP: full fine-tuning, a locked
image tower (LiT), LoRA or a bottleneck adapter, each at equal steps (benchmarks/transfer.py).

No CLIP weights can be downloaded on the machines this was written on, so the pretrained model is a
stand-in trained by rsjax: the demo's dual encoder (configs/smoke.py) on a mixture of RS-Synth and
the RSSCN7 train split, a captions.jsonl folder that benchmarks/transfer.py writes (--mix).

  rsjax train --config configs/transfer.py:stage=pretrain,mix=DIR --workdir runs/transfer/pretrain
  rsjax train --config configs/transfer.py:stage=rsscn7,peft=lora,init=runs/transfer/pretrain \\
      --workdir runs/transfer/rsscn7_lora

Arguments (comma-separated):
  stage=pretrain|rsicd|rsscn7  pretraining on the mixture, or adaptation to the 53 RSICD samples
               (45 train / 8 test images) or to RSSCN7 (train split; reported on val: zero-shot
               accuracy, mAP by class, recalls)
  peft=NAME    full | lock_image | lock_text | lora | adapter (rsjax/trainable.py: apply_preset)
  init=DIR     the pretrained run (init.checkpoint); mix=DIR the mixture folder (stage=pretrain)
  steps=N, lr=X, rank=R (LoRA), dim=D (adapter)
"""

import os

from rsjax.config import config_module, parse_arg
from rsjax.trainable import apply_preset

# Peak learning rates of the adaptation (not tuned): full fine-tuning moves every weight of a
# trained model and takes a smaller step than the few new parameters of LoRA and adapters.
ADAPT_LR = {"full": 3e-4, "lock_image": 3e-4, "lock_text": 3e-4, "lora": 1e-3, "adapter": 1e-3}


def _shared(name: str) -> str:
  here = os.path.dirname(os.path.abspath(__file__))
  root = os.environ.get("RSJAX_SHARED_DATA", os.path.join(here, "..", "..", "shared", "data"))
  return os.path.normpath(os.path.join(root, name))


def get_config(arg=None):
  args = parse_arg(arg)
  stage, peft = args.get("stage", "pretrain"), args.get("peft", "full")
  c = config_module("annotated.py", __file__).get_config()  # the smoke model on annotated data
  c.data.image_size = 64
  c.init = dict(checkpoint=args.get("init", ""))
  templates = config_module("rsscn7_scratch.py", __file__).TEMPLATES
  if stage == "pretrain":
    c.data.path = args.get("mix", "")
    c.train.update(steps=int(args.get("steps", 1000)), batch_size=128, warmup_steps=50,
                   checkpoint_every=500, log_every=50)
    c.eval.update(split="test", batch_size=250)
  elif stage == "rsicd":
    c.data.path = _shared("rsicd_samples")
    c.train.update(steps=int(args.get("steps", 100)), batch_size=32, warmup_steps=10,
                   checkpoint_every=0, log_every=10)
    c.eval.update(split="test", batch_size=64)
  elif stage == "rsscn7":
    # As configs/rsscn7_scratch.py: class-prompt captions, flips and quarter turns of the tiles.
    c.data = dict(c.data.to_dict(), path=_shared("rsscn7"), label_prompt=templates,
                  memory_dihedral=True)
    c.train.update(steps=int(args.get("steps", 300)), batch_size=64, warmup_steps=20,
                   checkpoint_every=0, log_every=25, positives="label", loss_sharding="auto")
    c.eval.update(split="val", batch_size=224, evaluators=("retrieval", "labels"),
                  templates=templates)
  else:
    raise ValueError(f"stage={stage!r}: use pretrain, rsicd or rsscn7")
  if stage != "pretrain":
    apply_preset(c, peft, rank=int(args.get("rank", 8)), adapter_dim=int(args.get("dim", 16)))
    c.train.learning_rate = float(args.get("lr", ADAPT_LR.get(peft, 3e-4)))
  return c
