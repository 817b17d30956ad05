"""The converted folder on disk: `convert_file` writes it, `read_info` / `load_converted` read it.

A converted folder OUT holds
  OUT/params                      the flat rsjax parameters, nested by '/', as an orbax checkpoint
  OUT/converted.json              model config, image size, tokenizer spec, preprocessing, source,
                                  key accounting, parameter shapes
  OUT/bpe_simple_vocab_16e6.txt.gz  CLIP's BPE merges, so training needs no open_clip install
and appears whole or not at all (written beside OUT, then renamed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import flax
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from rsjax.atomic import atomic_dir
from rsjax.convert.errors import ConversionError
from rsjax.convert.infer import infer_model, parameter_shapes
from rsjax.convert.keymap import OPENAI_METADATA, is_causal_mask, place
from rsjax.convert.readers import read_checkpoint
from rsjax.data.clip_tokenizer import ClipTokenizer
from rsjax.pixels import CLIP_MEAN, CLIP_STD

FORMAT = "rsjax-converted-clip"
INFO_FILE = "converted.json"
PARAMS_DIR = "params"
TOKENIZER_PATH = "clip_bpe"  # data.tokenizer_path value selecting rsjax's CLIP BPE tokenizer
VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"  # the merges file copied into a converted folder


def _nest(flat: dict[str, np.ndarray]) -> dict:
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 24), b""):
      h.update(chunk)
  return h.hexdigest()


def convert_file(path: str, out_dir: str, arch: str | None = None, activation: str | None = None,
                 unsafe_pickle: bool = False, log=print) -> dict:
  """Converts one checkpoint file into OUT_DIR (which must not exist or be empty). Returns the
  written converted.json content."""
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ConversionError(f"output folder {out_dir} is a file; give a new or empty folder as --out")
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise ConversionError(f"output folder {out_dir} exists and is not empty; give a new or empty "
                          "folder as --out")
  tensors, kind = read_checkpoint(path, unsafe_pickle)
  openai_style = kind == "torchscript" or any(k in tensors for k in OPENAI_METADATA)
  log(f"convert: read {len(tensors)} tensors from {path} ({kind})")
  name, cfg, size, notes = infer_model(tensors, arch, activation, openai_style)
  for note in notes:
    log(f"convert: {note}")
  shapes = parameter_shapes(cfg, size)
  expected_meta = {"input_resolution": size, "context_length": cfg.text.context_length,
                   "vocab_size": cfg.text.vocab_size}

  def check_metadata(key, value):
    if key == "attn_mask":
      return None if is_causal_mask(value, cfg.text.context_length) else (
          f"attn_mask {tuple(value.shape)}: not the causal mask of {cfg.text.context_length} tokens")
    if np.size(value) != 1 or int(value) != expected_meta[key]:
      return f"{key}: checkpoint says {value.tolist()}, the weights' shapes say {expected_meta[key]}"
    return None

  params, accounting = place(tensors, shapes, check_metadata)
  tokenizer = ClipTokenizer()
  if tokenizer.vocab_size != cfg.text.vocab_size:
    raise ConversionError(f"token_embedding.weight has {cfg.text.vocab_size} rows but CLIP's BPE "
                          f"tokenizer has {tokenizer.vocab_size} ids")
  info = {
      "format": FORMAT, "version": 1, "arch": name,
      "model": cfg.to_dict(), "image_size": size,
      "tokenizer": {**tokenizer.spec(), "data.tokenizer_path": TOKENIZER_PATH},
      "preprocess": {"resize": "shortest side, bicubic", "crop": "center", "size": size,
                     "mean": CLIP_MEAN.tolist(), "std": CLIP_STD.tolist()},
      "source": {"path": os.path.abspath(path), "kind": kind, "sha256": _sha256(path),
                 "keys": len(tensors)},
      "accounting": {**accounting, "keys": len(tensors)},
      "notes": notes,
      "params": {k: list(v.shape) for k, v in sorted(params.items())},
  }
  # replace=True: OUT_DIR can only be missing or empty here (checked above); an empty one is
  # replaced by the new folder.
  with atomic_dir(out_dir, replace=True) as tmp:
    # Uncompressed: trained float weights shrink by under 10% and restore about 3x slower.
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_compression=False)) as ckptr:
      ckptr.save(os.path.join(tmp, PARAMS_DIR), args=ocp.args.PyTreeSave(_nest(params)))
    with open(os.path.join(tmp, INFO_FILE), "w") as f:
      json.dump(info, f, indent=1)
    # The tokenizer's merges travel with the weights, so training needs no open_clip install.
    shutil.copyfile(tokenizer.path, os.path.join(tmp, VOCAB_NAME))
  n = sum(v.size for v in params.values())
  log(f"convert: {path} ({len(tensors)} keys) -> {out_dir}: {name}, image {size}, "
      f"{n / 1e6:.1f}M parameters, every key placed")
  return info


def read_info(directory: str) -> dict:
  """The converted.json content of a converted folder; refuses anything else."""
  path = os.path.join(directory, INFO_FILE)
  if not os.path.isfile(path):
    raise ConversionError(f"{directory} is not a converted checkpoint (no {INFO_FILE}; make one "
                          "with `rsjax convert`)")
  with open(path) as f:
    try:
      info = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ConversionError(f"{path}: not valid JSON ({e}); convert the checkpoint again with "
                            "`rsjax convert`") from None
  if not isinstance(info, dict) or info.get("format") != FORMAT:
    found = info.get("format") if isinstance(info, dict) else type(info).__name__
    raise ConversionError(f"{path}: unknown format {found!r}; convert the checkpoint again with "
                          "`rsjax convert`")
  missing = [k for k in ("model", "image_size") if k not in info]
  if missing:
    raise ConversionError(f"{path}: no {missing}; convert the checkpoint again with `rsjax convert`")
  return info


def load_converted(directory: str):
  """(converted.json content, model ConfigDict, flat params {path: numpy float32})."""
  directory = os.path.abspath(directory)
  info = read_info(directory)
  params_dir = os.path.join(directory, PARAMS_DIR)
  if not os.path.isdir(params_dir):
    raise ConversionError(f"{directory} has {INFO_FILE} but no {PARAMS_DIR}/ folder; convert the "
                          "checkpoint again with `rsjax convert`")
  try:
    with ocp.StandardCheckpointer() as ckptr:
      restored = ckptr.restore(params_dir)
  except Exception as e:  # noqa: BLE001  orbax raises many types for a damaged folder
    first = (str(e).strip().splitlines() or [""])[0]
    raise ConversionError(f"{params_dir}: the converted weights cannot be read "
                          f"({type(e).__name__}: {first}); convert the checkpoint again with "
                          "`rsjax convert`") from None
  flat = flax.traverse_util.flatten_dict(restored, sep="/")
  flat = {k: np.asarray(jax.device_get(v)) for k, v in flat.items()}
  return info, ml_collections.ConfigDict(info["model"]), flat
