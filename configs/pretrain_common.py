"""Shared body of the SigLIP pretraining configs (configs/pretrain_vit_*_siglip.py).

An RS5M-style web corpus (millions of remote-sensing image-caption pairs shipped as webdataset tars
or parquet) converted once with `rsjax data convert` into array_record shards, 224 px images, CLIP's
BPE tokenizer, the SigLIP sigmoid loss, global batch 32,768, bf16 compute with float32 parameters
and optimizer state, scanned layers. A slice name in the config argument picks the mesh and the
remat policy that `rsjax plan` found to fit (see each config's table).

Slice names count chips as JAX sees them: v5e-256 is 256 chips (one TensorCore each); v5p-128 is
128 TensorCores = 64 chips (two TensorCores per chip, one JAX device per chip).
"""

import math

import ml_collections

from rsjax.config import parse_arg
from rsjax.models.registry import model_config

# slice -> (chip kind for `rsjax plan --chip`, number of JAX devices)
SLICES = {"v5e-256": ("v5e", 256), "v5p-128": ("v5p", 64)}


def pretrain_config(model_name: str, arg: str | None, remat: dict[str, str]) -> ml_collections.ConfigDict:
  """model_name: a registry name (ViT-B-16, ViT-L-14); remat: slice -> remat policy from the plan."""
  args = parse_arg(arg)
  slice_name = next((k for k in args if k in SLICES), args.get("slice", "v5e-256"))
  if slice_name not in SLICES:
    raise ValueError(f"unknown slice '{slice_name}', choose from {sorted(SLICES)}")
  _, devices = SLICES[slice_name]
  c = ml_collections.ConfigDict()

  # The corpus after `rsjax data convert webdataset TARS... --out DIR` (data.name="webscale", keys
  # in rsjax/data/prepared.py load_webscale), streamed by grain; retrieval evaluation on a set
  # prepared with `rsjax data prepare rsicd ... --data-dir data/prepared`.
  c.data = dict(
      name="webscale",
      converted_dir=args.get("data_dir", "data/rs5m_converted"),
      tokenizer_path="clip_bpe",
      image_size=224,
      augment=dict(crop_scale_min=0.5, dihedral=True, color_jitter=0.0),
      num_workers=16,
      prefetch=4,
      # held-out retrieval evaluation on a prepared TFDS set (rsjax data prepare rsicd ...)
      eval_builder="rsicd",
      eval_data_dir=args.get("eval_data_dir", "data/prepared"),
  )

  c.model, _ = model_config(model_name)
  c.model.dtype = "bfloat16"
  c.model.scan = True
  c.model.remat = remat[slice_name]
  # SigLIP (Zhai et al. 2023): learnable temperature and bias, initialised to log(10) and -10.
  c.model.logit_bias = True
  c.model.init_logit_scale = math.log(10.0)
  c.model.init_logit_bias = -10.0

  # Optimiser after SigLIP's B/16 recipe (lr 1e-3 at batch 32k, short warm-up, cosine); weight
  # decay on matrices only.
  c.train = dict(
      seed=0,
      steps=int(args.get("steps", 20_000)),  # ~130 passes over 5M pairs at 32k per step
      batch_size=int(args.get("batch", 32_768)),
      grad_accum_steps=1,
      loss="siglip",
      loss_sharding="ring",
      triplet_margin=0.2,
      hash_weights=dict(contrastive=0.0, similarity=1.0, quantization=0.1, balance=0.01),
      hash_temperature=0.3,
      learning_rate=1e-3,
      warmup_steps=1000,
      final_lr_fraction=0.0,
      weight_decay=1e-4,
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      grad_clip_norm=1.0,
      log_every=50,
      checkpoint_every=1000,
      keep_checkpoints=3,
      nonfinite="stop",
      max_consecutive_skips=10,
      restore_fallback=True,  # a pre-empted pod slice may leave a bad newest checkpoint
  )
  c.eval = dict(split="test", batch_size=1024, at_step0=False, every=2000)

  # FSDP over the whole slice: parameters and Adam moments split over every chip, batch too.
  c.mesh = dict(data=1, fsdp=-1, tensor=1, dcn_data=1, rules="fsdp_tp")
  c.slice = slice_name
  c.slice_devices = devices
  return c
