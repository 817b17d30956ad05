"""Input-pipeline throughput: decode + augment + tokenize + batch of the RSSCN7 JPEGs at 224 px.

RSSCN7's train split (1,792 JPEGs of 400x400, ../shared/data/rsscn7) is prepared once with the
TFDS builder (`rsjax data prepare rsscn7`, not timed) and streamed through the train pipeline of
rsjax/data/stream.py: random resized crop (scale 0.5-1) to 224 px, caption-aware flips and quarter
turns, a caption from the class name, SentencePiece tokenization, batches of 64. The grain iterator
runs with 0 worker processes (2 reader threads in this process; PIL releases the GIL while
decoding and resizing), then 1 and 2 worker processes of one thread each; the first batches of each
are left out (worker start-up), then images/s is measured over --batches batches. A last row times
the per-image work alone in this process (ms per image, by stage) to show where the time goes.
Target: at least 300 images/s with 2 workers on the 2-core CPU.

  .venv/bin/python benchmarks/input_pipeline.py [--batches 60] [--workers 0,1,2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from common import report  # noqa: E402

PROMPT = "an aerial photograph of {label} seen from the upper left"


def _prepared(data_dir: str, shared: str) -> str:
  from rsjax.data import tfds_builders
  return tfds_builders.prepare("rsscn7", os.path.join(shared, "rsscn7"), data_dir)


def _tokenizer(path: str) -> str:
  from rsjax.data.tokenizers import train_sentencepiece
  labels = ["grass", "field", "industry", "riverlake", "forest", "resident", "parking"]
  if not os.path.exists(path):
    train_sentencepiece([PROMPT.format(label=l) for l in labels] * 20, path, vocab_size=64)
  return path


def _throughput(source, spec, workers: int, batch: int, batches: int, warmup: int) -> dict:
  from rsjax.data import stream
  start = time.perf_counter()
  # One prefetched batch per worker: batches buffered during start-up would flatter the rate.
  it = stream.train_iterator(source, spec, batch, seed=0, num_workers=workers, prefetch=1)
  for _ in range(warmup):
    next(it)
  ready = time.perf_counter()
  for _ in range(batches):
    out = next(it)
  elapsed = time.perf_counter() - ready
  assert out["image"].shape == (batch, spec.image_size, spec.image_size, 3)
  del it
  return {"workers": workers, "threads_per_process": 0 if workers else 2,
          "images_per_s": batches * batch / elapsed,
          "batches": batches, "batch_size": batch, "startup_s": ready - start}


def _stages(source, spec, n: int = 200) -> dict:
  """ms per image of each stage, in this process, on the first n records."""
  from rsjax.data import augment, decode
  from rsjax.data.tokenizers import SentencePieceTokenizer
  rng = np.random.default_rng(0)
  datas = [source[i]["image"] for i in range(min(n, len(source)))]
  tok = SentencePieceTokenizer(spec.tokenizer_path)
  t0 = time.perf_counter()
  images = [decode.open_rgb(d) for d in datas]
  t1 = time.perf_counter()
  pairs = [augment.augment_pair(im, PROMPT.format(label="grass"), spec.image_size, rng,
                                spec.augment) for im in images]
  t2 = time.perf_counter()
  for _, caption in pairs:
    tok.encode([caption], spec.context_length)
  t3 = time.perf_counter()
  np.stack([p[0] for p in pairs[:64]])
  t4 = time.perf_counter()
  k = len(datas)
  return {"workers": "stages (ms/image)", "decode_ms": (t1 - t0) / k * 1e3,
          "augment_ms": (t2 - t1) / k * 1e3, "tokenize_ms": (t3 - t2) / k * 1e3,
          "batch_ms": (t4 - t3) / 64 * 1e3}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shared-data", default=os.environ.get(
      "RSJAX_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")))
  p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "rsjax_bench_data"))
  p.add_argument("--workers", default="0,1,2")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--batches", type=int, default=60)
  p.add_argument("--warmup", type=int, default=3)
  args = p.parse_args()

  from rsjax.data import augment, stream, tfds_builders
  path = _prepared(args.data_dir, args.shared_data)
  source = tfds_builders.load_prepared(path).as_data_source("train")
  spec = stream.StreamSpec(
      image_size=224, context_length=32, tokenizer_path=_tokenizer(os.path.join(path, "bench.model")),
      augment=augment.AugmentConfig(crop_scale=(0.5, 1.0), dihedral=True), label_prompt=PROMPT)
  rows = [_throughput(source, spec, int(w), args.batch_size, args.batches, args.warmup)
          for w in args.workers.split(",")]
  rows.append(_stages(source, spec))
  report(rows, __file__, {"records": len(source), "image_size": 224,
                          "augment": "random resized crop 0.5-1, flips/quarter turns"})


if __name__ == "__main__":
  main()
