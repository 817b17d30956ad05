"""SigLIP pretraining of a ViT-B/16 image tower (224 px) with CLIP's 12-layer text tower on an
RS5M-style corpus, global batch 32,768. Shared settings: configs/pretrain_common.py.

  rsjax plan --config configs/pretrain_vit_b16_siglip.py:v5e-256 --mesh 1,256,1 --chip v5e
  rsjax plan --config configs/pretrain_vit_b16_siglip.py:v5p-128 --mesh 1,64,1 --chip v5p
  ZONE=... launch/tpu_vm.sh rs-b16 v5litepod-256 configs/pretrain_vit_b16_siglip.py:v5e-256 WORKDIR

Remat per slice, chosen with `rsjax plan` (FSDP over the slice; per-device peak memory estimate and
FLOPs per step; 149.6M parameters; the cheapest policy that fits wins):

  slice     per device  remat  memory                    TFLOP/step  pred. img/s at 40% MFU
  v5e-256   128 images  none   39.2 GiB of 16 (245%)     15.9        -
                        dots   16.7 GiB of 16 (105%)     16.0        -
                        full    4.3 GiB of 16 (27%)      19.5        132,271   <- chosen
  v5p-128   512 images  dots   66.8 GiB of 95 (70%)      63.9         94,173   <- chosen
                        full   17.0 GiB of 95 (18%)      78.1         77,046
"""

from rsjax.config import config_module

# slice -> remat policy chosen with `rsjax plan` (the table above).
REMAT = {"v5e-256": "full", "v5p-128": "dots"}


def get_config(arg=None):
  return config_module("pretrain_common.py", __file__).pretrain_config("ViT-B-16", arg, REMAT)
