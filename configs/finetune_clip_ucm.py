"""Fine-tune converted CLIP weights on UCM-Captions (2,100 images, 5 captions each; 1,680 train).

  rsjax train --config configs/finetune_clip_ucm.py:init=runs/remoteclip_b32,path=/data/ucm/dataset.json \\
      --set data.image_root=/data/ucm/imgs --workdir runs/ft_ucm

The recipe and its source are in configs/finetune_clip_common.py. path= defaults to UCM-Captions'
Karpathy-format dataset.json under $RSJAX_DATA (default ./data).
"""

import os

from rsjax.config import config_module

_common = config_module("finetune_clip_common.py", __file__)

DATA = os.environ.get("RSJAX_DATA", "data")


def get_config(arg=None):
  return _common.finetune_config(arg, dict(
      path=os.path.join(DATA, "ucm", "dataset.json"), format="karpathy",
      image_root="",
      steps=70,  # about 10 epochs of the 1,680 training images at batch 256
      eval_split="test"))
