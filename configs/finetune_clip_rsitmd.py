"""Fine-tune converted CLIP weights on RSITMD (4,743 images, 5 captions each; 3,432 train).

  rsjax train --config configs/finetune_clip_rsitmd.py:init=runs/remoteclip_b32,path=/data/rsitmd/dataset_RSITMD.json \\
      --set data.image_root=/data/rsitmd/images --workdir runs/ft_rsitmd

The recipe and its source are in configs/finetune_clip_common.py. path= defaults to RSITMD's
dataset_RSITMD.json under $RSJAX_DATA (default ./data).
"""

import os

from rsjax.config import config_module

_common = config_module("finetune_clip_common.py", __file__)

DATA = os.environ.get("RSJAX_DATA", "data")


def get_config(arg=None):
  return _common.finetune_config(arg, dict(
      path=os.path.join(DATA, "rsitmd", "dataset_RSITMD.json"), format="rsitmd",
      image_root="",
      steps=140,  # about 10 epochs of the 3,432 training images at batch 256
      eval_split="test"))
