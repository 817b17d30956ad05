"""Fine-tune converted CLIP weights on RSICD (10,921 images, 5 captions each; 8,734 train).

  rsjax convert --checkpoint RemoteCLIP-ViT-B-32.pt --out runs/remoteclip_b32
  rsjax train --config configs/finetune_clip_rsicd.py:init=runs/remoteclip_b32,path=/data/rsicd/dataset_rsicd.json \\
      --set data.image_root=/data/rsicd/RSICD_images --workdir runs/ft_rsicd

The recipe and its source are in configs/finetune_clip_common.py. path= defaults to RSICD's
Karpathy-format dataset_rsicd.json under $RSJAX_DATA (default ./data).
"""

import os

from rsjax.config import config_module

_common = config_module("finetune_clip_common.py", __file__)

DATA = os.environ.get("RSJAX_DATA", "data")


def get_config(arg=None):
  return _common.finetune_config(arg, dict(
      path=os.path.join(DATA, "rsicd", "dataset_rsicd.json"), format="karpathy",
      image_root="",
      steps=350,  # about 10 epochs of the 8,734 training images at batch 256
      eval_split="test"))
