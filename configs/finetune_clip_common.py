"""Shared part of configs/finetune_clip_{rsicd,rsitmd,ucm}.py: fine-tune converted CLIP weights
on an RS image-text set following the RemoteCLIP recipe. Not a config on its own.

Recipe (RemoteCLIP: F. Liu, D. Chen et al., "RemoteCLIP: A Vision Language Foundation Model for
Remote Sensing", IEEE TGRS 2024, arXiv:2306.11029; trained with open_clip): start from CLIP
weights, keep the CLIP architecture, tokenizer (BPE, 77 tokens) and preprocessing (native
resolution, OpenAI mean/std), and continue training with CLIP's symmetric InfoNCE loss and a
learnable temperature, AdamW with CLIP's betas/epsilon, linear warmup then cosine decay, weight
decay on matrices only. The numbers below follow that recipe's structure; their values are
open_clip's fine-tuning settings (AdamW b1 0.9, b2 0.98, eps 1e-6, weight decay 0.2) and a small
peak learning rate for a pretrained model (1e-5 at batch 256 in the RS CLIP fine-tuning
literature). They could not be checked against the paper's text from the machine this was written
on: verify them before a reproduction run.

Arguments after the colon (comma-separated):
  init=DIR     a folder written by `rsjax convert`: its architecture, image size and weights
  arch=NAME    a registry CLIP (e.g. ViT-L-14) when giving the weights by --set init.checkpoint=DIR
  path=FILE    the annotation file or folder (default per data set), format=NAME its format
  peft=NAME    full (default) | lock_image | lock_text | lora | adapter: what trains
               (rsjax/trainable.py: apply_preset), with rank=R for LoRA and dim=D for adapters;
               the peak learning rate becomes 1e-4 for lora / adapter unless lr=X is given
  runlocal     a few steps at batch 8 for checking the path works
"""

import ml_collections

from rsjax.config import config_module, parse_arg
from rsjax.trainable import apply_preset



def _vocab_beside(init: str) -> str:
  import os

  from rsjax.convert import VOCAB_NAME
  path = os.path.join(init, VOCAB_NAME) if init else ""
  return path if path and os.path.isfile(path) else "clip_bpe"


def _smoke_config() -> ml_collections.ConfigDict:
  return config_module("smoke.py", __file__).get_config()


def _model(args: dict) -> tuple[ml_collections.ConfigDict, int, str]:
  """(model section, native image size, init checkpoint) from init=DIR or arch=NAME."""
  from rsjax.convert import clip_model_config, read_info

  if args.get("init"):
    info = read_info(args["init"])
    return ml_collections.ConfigDict(info["model"]), info["image_size"], args["init"]
  model, size = clip_model_config(args.get("arch", "ViT-B-32"))
  return model, size, ""


def finetune_config(arg, dataset: dict) -> ml_collections.ConfigDict:
  """dataset: path, format, image_root, caption_field, steps (about 10 epochs at batch 256),
  eval_split."""
  args = parse_arg(arg)
  c = _smoke_config()  # trainer keys (checkpointing, mesh, ...) stay in step with the demo config
  model, size, init = _model(args)
  c.model = model
  c.init = dict(checkpoint=init)  # a `rsjax convert` folder; "" = random initialisation
  c.data = dict(
      name="annotated",
      path=args.get("path", dataset["path"]),
      format=args.get("format", dataset["format"]),
      image_root=dataset.get("image_root", ""),
      caption_field=dataset.get("caption_field", "captions"),
      label_prompt="",
      image_size=int(args.get("res", size)),
      bands=(),
      max_value=0.0,
      train_split="train",
      skip_bad_records=False,
      # CLIP's BPE, as the converted weights were trained with: the merges file `rsjax convert`
      # copied beside them, else one found by rsjax.data.clip_tokenizer.find_vocab.
      tokenizer_path=_vocab_beside(init),
  )
  c.train.update(
      steps=dataset["steps"],
      batch_size=256,
      loss="clip",
      learning_rate=1e-5,
      warmup_steps=max(dataset["steps"] // 20, 1),
      final_lr_fraction=0.0,
      weight_decay=0.2,
      b1=0.9,
      b2=0.98,
      eps=1e-6,
      grad_clip_norm=1.0,
      log_every=10,
      checkpoint_every=max(dataset["steps"] // 5, 1),
  )
  c.eval.update(split=dataset.get("eval_split", "test"), batch_size=128, at_step0=True, every=0)
  peft = args.get("peft", "full")
  apply_preset(c, peft, rank=int(args.get("rank", 8)), adapter_dim=int(args.get("dim", 16)))
  # The few new parameters of LoRA / adapters take larger steps than a full fine-tuning's.
  c.train.learning_rate = float(args.get("lr", 1e-4 if peft in ("lora", "adapter") else 1e-5))
  if "runlocal" in args:
    c.train.update(steps=5, batch_size=8, warmup_steps=1, log_every=1, checkpoint_every=5)
    c.eval.update(batch_size=16, at_step0=False)
  return c
