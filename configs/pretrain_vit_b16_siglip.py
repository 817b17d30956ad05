"""SigLIP pretraining of a ViT-B/16 image tower (224 px) with CLIP's 12-layer text tower on an
RS5M-style corpus, global batch 32,768. Shared settings: configs/pretrain_common.py.

  rsjax plan  --config configs/pretrain_vit_b16_siglip.py:v5e-256 --mesh 1,256,1 --chip v5e
  rsjax plan  --config configs/pretrain_vit_b16_siglip.py:v5p-128 --mesh 1,64,1 --chip v5p
  launch/tpu_vm.sh NAME v5litepod-256 configs/pretrain_vit_b16_siglip.py:v5e-256 gs://BUCKET/run

Remat per slice, chosen with `rsjax plan` (figures per device; see the README's plan section):
REMAT below.
"""

import importlib.util
import os

_COMMON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain_common.py")

# slice -> remat policy that `rsjax plan` showed to fit (see the module docstring).
REMAT = {"v5e-256": "full", "v5p-128": "full", "v4-128": "full", "cpu": "none"}


def _common():
  spec = importlib.util.spec_from_file_location("rsjax_pretrain_common", _COMMON)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  return _common().pretrain_config("ViT-B-16", arg, REMAT)
