"""Data sets by name: what `config.data.name` selects, as in-memory arrays ready for the pipeline.

"rs_synth" is the embedded RS-Synth set; "annotated" reads an annotation file and its images
(rsjax/data/annotated.py, e.g. ../shared/data/rsicd_samples). Each loader returns
`RetrievalData`: train images with all their captions tokenized, and evaluation splits flattened to one row per caption with the index of
its image (the layout the recall metrics take).
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np

from rsjax.data.tokenizers import SentencePieceTokenizer, train_sentencepiece


@dataclasses.dataclass
class EvalSplit:
  images: np.ndarray          # [M, H, W, 3] uint8
  tokens: np.ndarray          # [T, L] int32, one row per caption
  text_to_image: np.ndarray   # [T] int32, image index of each caption
  captions: list[str]         # [T]
  # Per-caption labels, each [T] (RS-Synth v2: "level" for multiscale, "role" / "distractor" /
  # "count" for small_objects; see rs_synth.caption_labels). Empty for plain splits.
  labels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PairSplit:
  """Image pairs with change captions (RS-Synth v2 temporal), for a pair encoder."""
  before: np.ndarray          # [P, H, W, 3] uint8
  after: np.ndarray           # [P, H, W, 3] uint8
  tokens: np.ndarray          # [T, L] int32, one row per caption
  text_to_pair: np.ndarray    # [T] int32, pair index of each caption
  captions: list[str]         # [T]
  changed: np.ndarray         # [P] bool
  change: list[str]           # [P] change type ("none", "buildings_added", ...)
  records: list[dict]         # [P] full records (region, counts, ...)


@dataclasses.dataclass
class RetrievalData:
  train_images: np.ndarray    # [N, H, W, 3] uint8
  train_tokens: np.ndarray    # [N, C, L] int32, C captions per image (padding rows all 0)
  eval_splits: dict[str, EvalSplit]
  tokenizer: SentencePieceTokenizer
  pair_splits: dict[str, PairSplit] = dataclasses.field(default_factory=dict)
  # Label-only sets (RSSCN7, class folders): the class of each train image [N] int32, indexing
  # class_names; eval splits then carry labels["scene"] per caption. None / () otherwise.
  train_labels: np.ndarray | None = None
  class_names: tuple[str, ...] = ()
  train_dihedral: bool = False  # random flips / quarter turns of the in-memory train images


def _encode_flat(tokenizer, captions: list[list[str]], length: int):
  """Captions per image -> (ids [T, L], image index of each caption [T], flat captions [T]).

  Warns when captions are longer than `length` tokens and had to be cut."""
  flat = [t for caps in captions for t in caps]
  owner = np.asarray([i for i, caps in enumerate(captions) for _ in caps], np.int32)
  ids, cut = tokenizer.encode_counting_cuts(flat, length)
  if cut:
    print(f"rsjax: warning: {cut} of {len(flat)} captions are longer than "
          f"model.text.context_length={length} tokens and were cut", flush=True)
  return ids, owner, flat


def _tokenize_per_image(tokenizer, captions: list[list[str]], length: int) -> np.ndarray:
  """Captions per image -> [N, C, L] with C the largest caption count; missing rows are padding."""
  ids, owner, _ = _encode_flat(tokenizer, captions, length)
  out = np.zeros((len(captions), max(len(c) for c in captions), length), np.int32)
  slot = np.concatenate([np.arange(len(c)) for c in captions]).astype(np.int64)
  out[owner, slot] = ids
  return out


def _eval_split(tokenizer, images: np.ndarray, captions: list[list[str]], length: int) -> EvalSplit:
  ids, owner, flat = _encode_flat(tokenizer, captions, length)
  return EvalSplit(images, ids, owner, flat)


def tokenizer_for(captions: list[str], workdir: str, vocab_size: int,
                  model_path: str = "") -> SentencePieceTokenizer:
  """The run's SentencePiece model: `model_path` when given (e.g. the one `rsjax data tokenizer`
  stored beside a prepared set), else trained once on the training captions and kept in the
  workdir so that resumed runs and later `rsjax eval` calls tokenize identically.
  "clip_bpe" (or a CLIP merges file, *.txt.gz) selects CLIP's BPE, for converted CLIP weights."""
  if model_path == "clip_bpe" or model_path.endswith(".txt.gz"):
    from rsjax.data.clip_tokenizer import ClipTokenizer
    return ClipTokenizer(None if model_path == "clip_bpe" else model_path)
  if model_path:
    if not os.path.isfile(model_path):
      raise FileNotFoundError(f"config key 'data.tokenizer_path': no tokenizer model at {model_path}")
    return SentencePieceTokenizer(model_path)
  path = os.path.join(workdir, "tokenizer.model")
  if not os.path.exists(path):
    train_sentencepiece(captions, path, vocab_size=vocab_size)
  return SentencePieceTokenizer(path)


def load_rs_synth(data: ml_collections.ConfigDict, workdir: str, context_length: int,
                  vocab_size: int, progress: bool = True) -> RetrievalData:
  from rsjax.data import rs_synth  # generator code loads only when this data set is asked for

  spec = rs_synth.SynthSpec(seed=data.seed, image_size=data.image_size,
                            num_train=data.num_train, num_val=data.num_val,
                            num_test=data.num_test)
  splits = rs_synth.load_or_generate(spec, data.cache_dir or None, progress=progress)
  captions = {s: [r["captions"] for r in recs] for s, (_, recs) in splits.items()}
  tokenizer = tokenizer_for([c for caps in captions["train"] for c in caps], workdir, vocab_size)
  eval_splits = {s: _eval_split(tokenizer, splits[s][0], captions[s], context_length)
                 for s in ("val", "test")}
  pair_splits = {}
  if data.get("challenges", False):  # RS-Synth v2 challenge subsets, generated only when asked
    cspec = rs_synth.ChallengeSpec(seed=data.seed, image_size=data.image_size,
                                   num_examples=data.get("challenge_size", 500))
    subsets = rs_synth.load_or_generate_challenges(cspec, data.cache_dir or None, progress)
    for name in ("multiscale", "small_objects"):
      arrays, recs = subsets[name]
      eval_splits[name] = _eval_split(tokenizer, arrays["images"], [r["captions"] for r in recs],
                                      context_length)
      eval_splits[name].labels = rs_synth.caption_labels(recs)
    arrays, recs = subsets["temporal"]
    ids, owner, flat = _encode_flat(tokenizer, [r["captions"] for r in recs], context_length)
    pair_splits["temporal"] = PairSplit(
        arrays["before"], arrays["after"], ids, owner, flat,
        np.asarray([r["changed"] for r in recs], bool), [r["change"] for r in recs], recs)
  return RetrievalData(
      train_images=splits["train"][0],
      train_tokens=_tokenize_per_image(tokenizer, captions["train"], context_length),
      eval_splits=eval_splits, tokenizer=tokenizer, pair_splits=pair_splits)


def load_annotated(*args, **kwargs) -> RetrievalData:
  from rsjax.data.annotated import load_annotated as load  # decoders load only when asked for
  return load(*args, **kwargs)


def load_prepared(*args, **kwargs) -> RetrievalData:
  from rsjax.data.prepared import load_prepared as load  # TFDS loads only when asked for
  return load(*args, **kwargs)


def load_webscale(*args, **kwargs) -> RetrievalData:
  from rsjax.data.prepared import load_webscale as load
  return load(*args, **kwargs)


LOADERS = {"rs_synth": load_rs_synth, "annotated": load_annotated, "tfds": load_prepared,
           "webscale": load_webscale}


def load_retrieval_data(config: ml_collections.ConfigDict, workdir: str,
                        progress: bool = True) -> RetrievalData:
  name = config.data.name
  if name not in LOADERS:
    raise ValueError(f"config key 'data.name': unknown data set '{name}', choose from {sorted(LOADERS)}")
  return LOADERS[name](config.data, workdir, config.model.text.context_length,
                       config.model.text.vocab_size, progress)
