"""Per-process sharding of the grain train stream (multi-host runs), on the real RSICD samples
read straight from their files (stream.FileSource)."""

import numpy as np

from rsjax.data import augment, records, sources, stream


def test_process_shards_split_the_global_stream(shared_data, tmp_path):
  from rsjax.data.tokenizers import train_sentencepiece
  recs, _ = records.collect(sources.read_source("captions_jsonl",
                                                str(shared_data / "rsicd_samples")))
  train = [r for r in recs if r.split == "train"]
  tok = train_sentencepiece([c for r in train for c in r.captions], tmp_path / "t.model",
                            vocab_size=300)
  spec = stream.StreamSpec(16, 12, tok, augment.AugmentConfig(crop_scale=(1.0, 1.0),
                                                              dihedral=False))
  source = stream.FileSource(train)
  whole = stream.train_dataset(source, spec, batch_size=8, seed=5)
  shards = [stream.train_dataset(source, spec, batch_size=4, seed=5, process_index=p,
                                 process_count=2) for p in (0, 1)]
  for step in range(3):  # 3 global batches of 8 = 2 processes x 4
    full = whole[step]["image"]
    for p, shard in enumerate(shards):
      np.testing.assert_array_equal(shard[step]["image"], full[p::2])
  # Across an epoch boundary (45 records) every record is seen once per epoch.
  first_epoch = np.concatenate([whole[i]["image"] for i in range(6)])[:45]
  assert len({img.tobytes() for img in first_epoch}) == 45
