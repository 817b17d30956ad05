"""`data.name="rs_synth"`: the embedded RS-Synth set, generated (or read from its cache) in memory.

Config keys (data section): seed, image_size, num_train / num_val / num_test, cache_dir ("" ->
$RSJAX_CACHE or ~/.cache/rsjax), challenges (also the RS-Synth v2 multiscale / small_objects eval
splits and the temporal pair split) and challenge_size.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from rsjax.data.tokenize import encode_flat, eval_split, tokenize_per_image, tokenizer_for
from rsjax.data.types import PairSplit, RetrievalData


def load_rs_synth(data: ml_collections.ConfigDict, workdir: str, context_length: int,
                  vocab_size: int, progress: bool = True) -> RetrievalData:
  from rsjax.data import rs_synth  # generator code loads only when this data set is asked for

  spec = rs_synth.SynthSpec(seed=data.seed, image_size=data.image_size,
                            num_train=data.num_train, num_val=data.num_val,
                            num_test=data.num_test)
  splits = rs_synth.load_or_generate(spec, data.cache_dir or None, progress=progress)
  captions = {s: [r["captions"] for r in recs] for s, (_, recs) in splits.items()}
  tokenizer = tokenizer_for([c for caps in captions["train"] for c in caps], workdir, vocab_size)
  eval_splits = {s: eval_split(tokenizer, splits[s][0], captions[s], context_length)
                 for s in ("val", "test")}
  pair_splits = {}
  if data.get("challenges", False):  # RS-Synth v2 challenge subsets, generated only when asked
    cspec = rs_synth.ChallengeSpec(seed=data.seed, image_size=data.image_size,
                                   num_examples=data.get("challenge_size", 500))
    subsets = rs_synth.load_or_generate_challenges(cspec, data.cache_dir or None, progress)
    for name in ("multiscale", "small_objects"):
      arrays, recs = subsets[name]
      eval_splits[name] = eval_split(tokenizer, arrays["images"], [r["captions"] for r in recs],
                                     context_length)
      eval_splits[name].labels = rs_synth.caption_labels(recs)
    arrays, recs = subsets["temporal"]
    ids, owner, flat = encode_flat(tokenizer, [r["captions"] for r in recs], context_length)
    pair_splits["temporal"] = PairSplit(
        arrays["before"], arrays["after"], ids, owner, flat,
        np.asarray([r["changed"] for r in recs], bool), [r["change"] for r in recs], recs)
  return RetrievalData(
      train_images=splits["train"][0],
      train_tokens=tokenize_per_image(tokenizer, captions["train"], context_length),
      eval_splits=eval_splits, tokenizer=tokenizer, pair_splits=pair_splits)
