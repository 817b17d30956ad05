"""SigLIP pretraining of a ViT-L/14 image tower (224 px) with CLIP's 12-layer, 768-wide text tower
on an RS5M-style corpus, global batch 32,768. Shared settings: configs/pretrain_common.py.

  rsjax plan --config configs/pretrain_vit_l14_siglip.py:v5p-128 --mesh 1,64,1 --chip v5p
  rsjax plan --config configs/pretrain_vit_l14_siglip.py:v5e-256 --mesh 1,256,1 --chip v5e
  ZONE=... QUEUED=1 launch/tpu_vm.sh rs-l14 v5p-128 configs/pretrain_vit_l14_siglip.py:v5p-128 WORKDIR

Remat per slice, chosen with `rsjax plan` (FSDP over the slice; per-device peak memory estimate and
FLOPs per step; 427.6M parameters; the cheapest policy that fits wins):

  slice     per device  remat  memory                     TFLOP/step  pred. img/s at 40% MFU
  v5p-128   512 images  none   502.5 GiB of 95 (529%)     270.8       -
                        dots   210.7 GiB of 95 (222%)     272.0       -
                        full    36.1 GiB of 95 (38%)      332.8       18,077   <- chosen
  v5e-256   128 images  dots    52.8 GiB of 16 (330%)      68.0       -
                        full     9.1 GiB of 16 (57%)       83.2       31,035   <- chosen
"""

from rsjax.config import config_module

# slice -> remat policy chosen with `rsjax plan` (the table above).
REMAT = {"v5e-256": "full", "v5p-128": "full"}


def get_config(arg=None):
  return config_module("pretrain_common.py", __file__).pretrain_config("ViT-L-14", arg, REMAT)
