"""`data.name="levir_cc_change"`: LEVIR-CC (or its LEVIR-MCI release) as a change set, like
`rs_synth_change` (rsjax/data/change_synthetic.py): before/after pairs [P, 2, H, W, 3] uint8 with
their change captions, for the change encoder (model.temporal) and the `change` evaluator.

Config keys (data section):
  format             levir_cc (LevirCCcaptions.json) | levir_mci ({train,val,test}.txt + tokens/)
  path               the annotation file, or the folder holding it (levir_cc), or the folder of
                     the split lists (levir_mci)
  image_root         folder holding images/<split>/{A,B}/ ("" = beside the annotations)
  image_size         side in pixels after resizing (LEVIR-CC's images are 256)
  train_split        the split to train on ("train")
  eval_splits        the splits to evaluate on (("val", "test")); each must be in the annotations
  num_train / num_val / num_test   0 = every pair of the split, else a random subset of that many
                     pairs (drawn with `seed`, kept in file order), to try things on a CPU
  seed               the subset draw
  skip_bad_records   skip (and list, all of them in one log summary, and in
                     WORKDIR/bad_records.json) bad pairs instead of stopping on them
  tokenizer_path     "" -> a SentencePiece model trained on the train captions in the workdir

Bad pairs: a date whose file is missing, a date that cannot be decoded, dates of different sizes
(compared as decoded, before resizing), a pair without captions. Each is an error of one line
naming the pair (its key and where it is in the annotations); all of them are found in one pass.

Labels: "changed" per pair from LEVIR-CC's changeflag. LEVIR-MCI (and a LEVIR-CC entry without a
flag) has none: such a pair counts as unchanged when every one of its captions is a no-change
sentence (`is_no_change`: "there is no difference", "the two scenes seem identical", ...).
"change" per caption is the CHANGE_TYPES index the `change` evaluator groups recalls by; LEVIR-CC
has no change types, so unchanged pairs get 0 ("none") and changed ones UNKNOWN_CHANGE (-1), which
matches no type: the evaluator's per-type rows are then only "none" (the same pairs as
"unchanged"), never a made-up type.
"""

from __future__ import annotations

import concurrent.futures
import os
import re

import ml_collections
import numpy as np

from rsjax.console import log
from rsjax.data import decode, records, sources
from rsjax.data.annotated import SKIP_HINT
from rsjax.data.records import SPLITS, BadRecordError
from rsjax.data.tokenize import eval_split, tokenize_per_image, tokenizer_for
from rsjax.data.types import RetrievalData
from rsjax.errors import ConfigError

FORMATS = ("levir_cc", "levir_mci")
UNKNOWN_CHANGE = -1  # labels["change"] of a changed pair: LEVIR-CC names no change type

# Sentences that say nothing changed, as LEVIR-CC's annotators (and RS-Synth's grammar) write them:
# one that opens with a negation ("no buildings were built", "nothing has changed"), or one with a
# no-change phrase and no word of a change.
_NEGATED = re.compile(
    r"^(there (is|are|has been|have been|was|were) )?(almost )?(no|nothing|none)\b")
_NO_CHANGE = re.compile(
    r"\b(no|not any|nothing|without)( \w+)? (change|changes|changed|difference|differences)\b"
    r"|\bnothing (has |have )?(changed|change)\b|\b(identical|unchanged|the same|no change)\b"
    r"|\bremains? (the )?same\b|\bsame as before\b")
# Words of a change: a sentence with one of them describes a change even if it has "the same".
_CHANGE_WORDS = re.compile(
    r"\b(built|constructed|added|appear|appears|appeared|new|removed|demolished|torn|disappear"
    r"|disappears|disappeared|replaced|turned|becomes?|became|more|fewer|widened|expanded)\b")


def is_no_change(caption: str) -> bool:
  """Whether a caption says nothing changed: it opens with a negation ("there is no difference",
  "no houses were built") or has a no-change phrase ("the two scenes seem identical") and no word
  of a change ("a new road ..." never is one)."""
  text = " ".join(re.findall(r"[a-z']+", caption.lower()))
  if _NEGATED.search(text):
    return True
  return bool(_NO_CHANGE.search(text)) and not _CHANGE_WORDS.search(text)


def pair_changed(record: records.Record) -> bool:
  """A pair's change flag: its changeflag, else (no flag, as in LEVIR-MCI) whether some caption is
  not a no-change sentence."""
  if record.changed is not None:
    return bool(record.changed)
  return not all(is_no_change(c) for c in record.captions)


def _annotation_path(data: ml_collections.ConfigDict) -> str:
  path = data.path
  if not path:
    raise ConfigError("config key 'data.path': empty; give the LEVIR-CC annotation file or folder")
  if data.format == "levir_cc" and os.path.isdir(path):
    return os.path.join(path, "LevirCCcaptions.json")
  return path


def _subset(recs: list[records.Record], count: int, seed: int, split: str) -> list[records.Record]:
  """`count` of the records drawn with `seed` (file order kept); all of them for count 0."""
  if not count or count >= len(recs):
    return recs
  rng = np.random.default_rng([seed, SPLITS.index(split)])
  keep = np.sort(rng.choice(len(recs), count, replace=False))
  return [recs[i] for i in keep]


def decode_pairs(recs: list[records.Record], size: int, bad: records.BadRecords,
                 progress: bool = False) -> tuple[np.ndarray, list[records.Record]]:
  """Decodes every pair -> ([P, 2, size, size, 3] uint8, the records kept); a pair that cannot be
  used is added to `bad`, named by its annotation location and key."""
  def one(r):
    try:
      return decode.decode_pair(r.images, size)
    except BadRecordError as e:
      return type(e)(f"{r.where} [{r.key}]: {e}")

  pairs, kept = [], []
  workers = min(8, os.cpu_count() or 1)  # PIL decodes with the GIL released
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for i, (r, out) in enumerate(zip(recs, pool.map(one, recs)), 1):
      if isinstance(out, BadRecordError):
        bad.add(r.where, out, split=r.split)
      else:
        pairs.append(out)
        kept.append(r)
      if progress and i % 2000 == 0:
        log(f"decoded {i} of {len(recs)} pairs")
  if not pairs:
    return np.zeros((0, 2, size, size, 3), np.uint8), kept
  return np.stack(pairs), kept


def validated_pairs(data: ml_collections.ConfigDict, workdir: str | None = None,
                    progress: bool = True
                    ) -> dict[str, tuple[np.ndarray, list[records.Record]]]:
  """Every record checked and every pair decoded in one pass, the bad ones raised together (or,
  with data.skip_bad_records, listed and left out).
  -> {split: (pairs [P, 2, S, S, 3] uint8, their records in file order)} for the configured
  train and eval splits."""
  if data.format not in FORMATS:
    raise ConfigError(f"config key 'data.format': {data.format!r} is not a LEVIR-CC format; "
                      f"choose from {FORMATS}")
  path = _annotation_path(data)
  train_split = data.get("train_split", "train")
  wanted = [train_split] + [s for s in data.get("eval_splits", ("val", "test")) if s != train_split]
  for s in wanted:
    if s not in SPLITS:
      raise ConfigError(f"config key 'data.eval_splits': unknown split {s!r} (LEVIR-CC has "
                        f"{SPLITS})")
  raw = list(sources.read_source(data.format, path, data.get("image_root", "") or None))
  present = sorted({r.split for r in raw if isinstance(r, records.Record)})
  recs, bad = records.collect(raw)  # every split's records are checked, the wanted ones decoded
  by_split: dict[str, list[records.Record]] = {}
  for r in recs:
    by_split.setdefault(r.split, []).append(r)
  arrays = {}
  for s in wanted:
    chosen = _subset(by_split.get(s, []), int(data.get(f"num_{s}", 0)), int(data.get("seed", 0)),
                     s)
    arrays[s] = decode_pairs(chosen, data.image_size, bad, progress)
  listing = os.path.join(workdir, "bad_records.json") if workdir else None
  records.check_bad(bad, data.get("skip_bad_records", False), path, SKIP_HINT, listing)
  for s in wanted:
    if len(arrays[s][1]):
      continue
    in_split = bad.in_split(s)
    if len(in_split):  # every pair of the split was bad (and skipped)
      records.require_records([], in_split, path, f"split {s!r}")
    key = "data.train_split" if s == train_split else "data.eval_splits"
    raise ConfigError(f"config key '{key}': no pairs in split {s!r} of {path} "
                      f"(splits present: {present or 'none'})")
  return arrays


def load_levir_cc_change(data: ml_collections.ConfigDict, workdir: str, context_length: int,
                         vocab_size: int, progress: bool = True) -> RetrievalData:
  """The pairs in memory, validated (see `validated_pairs`), tokenized, with the eval splits'
  per-caption "changed" and "change" labels (module docstring)."""
  arrays = validated_pairs(data, workdir, progress)
  train_split = data.get("train_split", "train")
  captions = {s: [list(r.captions) for r in kept] for s, (_, kept) in arrays.items()}
  changed = {s: np.asarray([pair_changed(r) for r in kept], bool)
             for s, (_, kept) in arrays.items()}
  tokenizer = tokenizer_for([c for caps in captions[train_split] for c in caps], workdir,
                            vocab_size, data.get("tokenizer_path", ""))
  eval_splits = {}
  for s, (pairs, _) in arrays.items():
    if s == train_split:
      continue
    split = eval_split(tokenizer, pairs, captions[s], context_length)
    owner = split.text_to_image
    flags = changed[s][owner]
    split.labels = {"changed": flags.astype(np.int32),
                    "change": np.where(flags, UNKNOWN_CHANGE, 0).astype(np.int32)}
    eval_splits[s] = split
  log(f"data {data.path} ({data.format}): " + ", ".join(
      f"{s} {len(a)} pairs ({int(changed[s].sum())} changed)" for s, (a, _) in arrays.items()))
  return RetrievalData(
      train_images=arrays[train_split][0],
      train_tokens=tokenize_per_image(tokenizer, captions[train_split], context_length),
      eval_splits=eval_splits, tokenizer=tokenizer,
      train_extras={"changed": changed[train_split]})
