"""`data.name="tfds"`: train on a set made by `rsjax data prepare`, streamed through grain.

Training batches stream from the array_record files (decode, augment, caption sampling, tokenize in
the grain pipeline of rsjax/data/stream.py); evaluation splits are decoded once into memory at
data.image_size without augmentation.

Config keys (data section), see configs/prepared.py:
  data_dir, builder     the prepared set is <data_dir>/<builder>/<version>
  version               "" -> the newest version present
  train_split           split to train on; every other split is available for evaluation
  image_size            side in pixels of train crops and eval images
  bands, max_value      band choice and white level for TIFFs (see rsjax/data/decode.py)
  label_prompt          "" or e.g. "an aerial photograph of {label}" for label-only sets
  augment               crop_scale_min (1.0: no random crop), dihedral (flips/quarter turns with
                        caption rewriting), color_jitter (0: off)
  num_workers, prefetch grain worker processes (0: threads in this process) and their buffers
  tokenizer_path        "" -> tokenizer.model beside the prepared set when present (rsjax data
                        tokenizer), else one trained on the train captions in the workdir
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from rsjax.data import decode, stream, tfds_builders, tokenizer_files, webscale
from rsjax.data.tokenize import eval_split, tokenizer_for
from rsjax.data.types import StreamingRetrievalData
from rsjax.console import log
from rsjax.errors import ConfigError, InputError


def prepared_dir(data: ml_collections.ConfigDict) -> str:
  base = os.path.join(os.path.abspath(data.data_dir), data.builder)
  version = data.get("version", "")
  if not version:
    versions = sorted(os.listdir(base)) if os.path.isdir(base) else []
    versions = [v for v in versions if not v.startswith("incomplete")]
    if not versions:
      raise FileNotFoundError(f"config keys 'data.data_dir'/'data.builder': no prepared set in "
                              f"{base} (run `rsjax data prepare {data.builder} ...` first)")
    version = versions[-1]
  return os.path.join(base, version)


def dataset_normalization(data: ml_collections.ConfigDict) -> tuple[tuple, tuple]:
  """(mean, std) per channel, 0..255 scale, of the prepared set's train split (metadata.json)."""
  path = os.path.join(prepared_dir(data), "metadata.json")
  with open(path) as f:
    norm = json.load(f).get("normalization")
  if not norm:
    raise InputError(f"{path} has no 'normalization' entry; prepare the set again")
  return tuple(norm["mean"]), tuple(norm["std"])


def _texts(values) -> list[str]:
  return [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]


def _eval_arrays(source, spec: stream.StreamSpec,
                 name: str = "eval") -> tuple[np.ndarray, list[list[str]]]:
  images, captions = [], []
  for i in range(len(source)):
    r = source[i]
    caps = _texts(r["captions"])
    label = _texts([r["label"]])[0]
    if not caps and spec.label_prompt and label:
      caps = [spec.label_prompt.format(label=label)]
    if not caps:
      continue  # label-only records without a prompt cannot be retrieval queries
    images.append(decode.decode_resized(r["image"], spec.image_size, _texts([r["key"]])[0],
                                        spec.bands, spec.max_value))
    captions.append(caps)
  if not images:
    raise InputError(f"split {name!r}: no record has captions, so it has no retrieval queries "
                     "(a label-only set needs data.label_prompt)")
  return np.stack(images), captions


def load_prepared(data: ml_collections.ConfigDict, workdir: str, context_length: int,
                  vocab_size: int, progress: bool = True) -> StreamingRetrievalData:
  path = prepared_dir(data)
  builder = tfds_builders.load_prepared(path)
  train_split = data.get("train_split", "train")
  if train_split not in builder.info.splits:
    raise ConfigError(f"config key 'data.train_split': {path} has no split {train_split!r} "
                     f"(splits: {sorted(builder.info.splits)})")
  model_path = data.get("tokenizer_path", "")
  if not model_path and os.path.isfile(tokenizer_files.beside(path)):
    model_path = tokenizer_files.beside(path)
  train_source = builder.as_data_source(train_split)
  if len(train_source) and train_source[0]["image_b"]:
    raise InputError(f"{path} holds image pairs (change captioning); the image-text trainer "
                     "takes single images")
  if model_path:
    tokenizer = tokenizer_for([], workdir, vocab_size, model_path)
  else:
    captions = [c for i in range(len(train_source)) for c in _texts(train_source[i]["captions"])]
    tokenizer = tokenizer_for(captions, workdir, vocab_size)
  spec = stream.spec_from_config(data, context_length, model_path or tokenizer.path)
  eval_splits = {}
  for split in builder.info.splits:
    if split != train_split:
      images, caps = _eval_arrays(builder.as_data_source(split), spec, split)
      eval_splits[split] = eval_split(tokenizer, images, caps, context_length)
  log(f"data {path}: train {len(train_source)} records (streamed), " +
      ", ".join(f"{s} {len(e.images)} images" for s, e in eval_splits.items()))

  return stream.streaming_data(train_source, spec, data, eval_splits, tokenizer)


def load_webscale(data: ml_collections.ConfigDict, workdir: str, context_length: int,
                  vocab_size: int, progress: bool = True) -> StreamingRetrievalData:
  """data.name="webscale": a corpus converted by `rsjax data convert` (RS5M / SkyScript style),
  streamed for training; retrieval evaluation on a prepared set (data.eval_builder in
  data.eval_data_dir, "" for none).

  The tokenizer must be chosen up front (data.tokenizer_path: "clip_bpe" or a SentencePiece model
  from `rsjax data tokenizer`): reading millions of captions to train one here is not done."""
  source = webscale.ConvertedSource(data.converted_dir)
  model_path = data.get("tokenizer_path", "")
  if not model_path:
    raise ConfigError("config key 'data.tokenizer_path': a converted corpus needs a tokenizer named "
                     "up front ('clip_bpe', or a model made by `rsjax data tokenizer`)")
  tokenizer = tokenizer_for([], workdir, vocab_size, model_path)
  spec = stream.spec_from_config(data, context_length, model_path)
  eval_splits = {}
  if data.get("eval_builder", ""):
    held_out = ml_collections.ConfigDict({"data_dir": data.eval_data_dir,
                                          "builder": data.eval_builder, "version": ""})
    builder = tfds_builders.load_prepared(prepared_dir(held_out))
    for split in builder.info.splits:
      if split != "train":
        images, caps = _eval_arrays(builder.as_data_source(split), spec, split)
        eval_splits[split] = eval_split(tokenizer, images, caps, context_length)
  log(f"data {data.converted_dir}: {len(source)} records (streamed); evaluation: "
      + (", ".join(f"{data.eval_builder} {s} {len(e.images)} images"
                   for s, e in eval_splits.items()) or "none"))
  return stream.streaming_data(source, spec, data, eval_splits, tokenizer)
