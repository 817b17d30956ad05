"""`data.name="rs_synth_change"`: RS-Synth's temporal splits (rsjax/data/rs_synth/temporal_splits.py)
as a change set: each example a date sequence [T, H, W, 3] with change captions.

Config keys (data section): seed, image_size, num_train / num_val / num_test, dates, no_change (the
share of sequences without change), cache_dir.
train_images are the sequences [N, T, H, W, 3], train_extras["changed"] [N] the change / no-change
flags; the val and test splits carry per-caption labels "changed" and "change" (the index of the
change type in captions_grammar.CHANGE_TYPES) for the `change` evaluator.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from rsjax.data.captions_grammar import CHANGE_TYPES
from rsjax.data.tokenize import eval_split, tokenize_per_image, tokenizer_for
from rsjax.data.types import RetrievalData


def load_rs_synth_change(data: ml_collections.ConfigDict, workdir: str, context_length: int,
                         vocab_size: int, progress: bool = True) -> RetrievalData:
  from rsjax.data.rs_synth.temporal_splits import TemporalSplitSpec, load_or_generate_temporal

  spec = TemporalSplitSpec(seed=data.seed, image_size=data.image_size, num_train=data.num_train,
                           num_val=data.num_val, num_test=data.num_test, dates=data.dates,
                           no_change=data.get("no_change", 0.5))
  splits = load_or_generate_temporal(spec, data.cache_dir or None, progress=progress)
  captions = {s: [r["captions"] for r in recs] for s, (_, recs) in splits.items()}
  tokenizer = tokenizer_for([c for caps in captions["train"] for c in caps], workdir, vocab_size)
  eval_splits = {}
  for name in ("val", "test"):
    sequences, records = splits[name]
    split = eval_split(tokenizer, sequences, captions[name], context_length)
    owner = split.text_to_image
    split.labels = {
        "changed": np.asarray([records[p]["changed"] for p in owner], np.int32),
        "change": np.asarray([CHANGE_TYPES.index(records[p]["change"]) for p in owner], np.int32)}
    eval_splits[name] = split
  sequences, records = splits["train"]
  return RetrievalData(
      train_images=sequences,
      train_tokens=tokenize_per_image(tokenizer, captions["train"], context_length),
      eval_splits=eval_splits, tokenizer=tokenizer,
      train_extras={"changed": np.asarray([r["changed"] for r in records], bool)})
