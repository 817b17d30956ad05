"""Writes before/after pairs with their captions in the LEVIR-CC layout, so that RS-Synth's
temporal pairs (rsjax/data/rs_synth/temporal_splits.py) can stand in for the real LEVIR-CC images
(not on every machine) and go through exactly the reader `data.name="levir_cc_change"` uses:

  <out>/images/<split>/A/<split>_<index>.png     before
  <out>/images/<split>/B/<split>_<index>.png     after
  <out>/LevirCCcaptions.json                     {"images": [{"filepath", "filename", "imgid",
                                                  "split", "changeflag", "sentids",
                                                  "sentences": [{"raw", "tokens", ...}]}]}
  <out>/levir_mci/{train,val,test}.txt           the same pairs as LEVIR-MCI lists them
  <out>/levir_mci/tokens/<split>_<index>.txt     their captions as <START> ... <END> token lists

  python -m rsjax.data.levir_layout --out /tmp/levir_synth --num-train 512 --num-val 64 \\
      --num-test 128 --image-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np
from PIL import Image

from rsjax import atomic
from rsjax.errors import InputError

ANNOTATION = "LevirCCcaptions.json"
MCI_FOLDER = "levir_mci"


def caption_tokens(raw: str) -> list[str]:
  """'A road was built.' -> ['a', 'road', 'was', 'built'] (LEVIR-CC's tokens: lower case, words
  only, punctuation dropped)."""
  return re.findall(r"[a-z0-9']+", raw.lower())


def _check_split(split: str, sequences: np.ndarray, records: list[dict]) -> None:
  if sequences.ndim != 5 or sequences.shape[1] != 2 or sequences.shape[-1] != 3:
    raise InputError(f"levir_layout: split {split!r}: expected before/after pairs [P, 2, H, W, 3], "
                     f"got {sequences.shape} (the LEVIR-CC layout has two dates, A and B)")
  if sequences.dtype != np.uint8:
    raise InputError(f"levir_layout: split {split!r}: expected uint8 pixels, got {sequences.dtype}")
  if len(records) != len(sequences):
    raise InputError(f"levir_layout: split {split!r}: {len(sequences)} pairs but {len(records)} "
                     "records")
  for i, r in enumerate(records):
    if not r.get("captions") or "changed" not in r:
      raise InputError(f"levir_layout: split {split!r}, record {i}: needs 'captions' (non-empty) "
                       "and 'changed'")


def write_levir_cc(out_dir: str, splits: dict[str, tuple[np.ndarray, list[dict]]],
                   mci: bool = True) -> dict[str, int]:
  """Writes `splits` {split: (pairs [P, 2, H, W, 3] uint8, P records with "captions" [str] and
  "changed" bool)} under `out_dir` in the LEVIR-CC layout (module docstring), plus (mci=True) the
  LEVIR-MCI token files. Pixels are written as PNG, so they read back unchanged.
  -> {split: pairs written}."""
  for split, (sequences, records) in splits.items():
    _check_split(split, np.asarray(sequences), records)
  entries, counts = [], {}
  mci_names: dict[str, list[str]] = {}
  sent_id = 0
  for split, (sequences, records) in splits.items():
    for side in ("A", "B"):
      os.makedirs(os.path.join(out_dir, "images", split, side), exist_ok=True)
    names = []
    for i, (pair, record) in enumerate(zip(np.asarray(sequences), records)):
      name = f"{split}_{i:06d}.png"
      for side, image in zip(("A", "B"), pair):
        Image.fromarray(image).save(os.path.join(out_dir, "images", split, side, name))
      sentences = []
      for raw in record["captions"]:
        sentences.append({"raw": raw, "tokens": caption_tokens(raw), "imgid": len(entries),
                          "sentid": sent_id})
        sent_id += 1
      entries.append({"filepath": split, "filename": name, "imgid": len(entries), "split": split,
                      "changeflag": int(bool(record["changed"])),
                      "sentids": [s["sentid"] for s in sentences], "sentences": sentences})
      names.append(name)
    counts[split] = len(names)
    mci_names[split] = names
  if mci:  # LEVIR-MCI keeps no change flag: readers tell change from the captions
    folder = os.path.join(out_dir, MCI_FOLDER)
    os.makedirs(os.path.join(folder, "tokens"), exist_ok=True)
    by_name = {(e["split"], e["filename"]): e for e in entries}
    for split, names in mci_names.items():
      atomic.write_text(os.path.join(folder, f"{split}.txt"), "".join(n + "\n" for n in names))
      for name in names:
        tokens = [["<START>", *s["tokens"], "<END>"] for s in by_name[(split, name)]["sentences"]]
        atomic.write_text(os.path.join(folder, "tokens", os.path.splitext(name)[0] + ".txt"),
                          json.dumps(tokens))
  # The annotation last: a folder with LevirCCcaptions.json has all its images.
  atomic.write_json(os.path.join(out_dir, ANNOTATION), {"images": entries}, indent=None)
  return counts


def write_rs_synth(out_dir: str, spec, cache_dir: str | None = None,
                   progress: bool = True) -> dict[str, int]:
  """RS-Synth's temporal splits of `spec` (a TemporalSplitSpec with dates=2) written in the
  LEVIR-CC layout. -> {split: pairs written}."""
  from rsjax.data.rs_synth.temporal_splits import load_or_generate_temporal

  if spec.dates != 2:
    raise InputError(f"levir_layout: the LEVIR-CC layout has two dates, got dates={spec.dates}")
  splits = load_or_generate_temporal(spec, cache_dir, progress=progress)
  return write_levir_cc(out_dir, splits)


def main(argv: list[str] | None = None) -> int:
  from rsjax.data.rs_synth.temporal_splits import TemporalSplitSpec

  parser = argparse.ArgumentParser(
      prog="python -m rsjax.data.levir_layout",
      description="Write RS-Synth temporal pairs in the LEVIR-CC layout (a stand-in for LEVIR-CC; "
                  "train on it with configs/levir_cc_change.py:path=OUT).")
  parser.add_argument("--out", required=True, help="folder to write (created if needed)")
  parser.add_argument("--num-train", type=int, default=512)
  parser.add_argument("--num-val", type=int, default=64)
  parser.add_argument("--num-test", type=int, default=128)
  parser.add_argument("--image-size", type=int, default=64,
                      help="side in pixels (LEVIR-CC's own images are 256)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no-change", type=float, default=0.5,
                      help="share of unchanged pairs (LEVIR-CC: about half)")
  parser.add_argument("--cache-dir", default="", help="RS-Synth cache ('' = the default)")
  args = parser.parse_args(argv)
  spec = TemporalSplitSpec(seed=args.seed, image_size=args.image_size, num_train=args.num_train,
                           num_val=args.num_val, num_test=args.num_test, dates=2,
                           no_change=args.no_change)
  counts = write_rs_synth(args.out, spec, args.cache_dir or None)
  pairs = ", ".join(f"{s} {n}" for s, n in counts.items())
  print(f"wrote {sum(counts.values())} RS-Synth pairs ({pairs}) at {args.image_size} px in the "
        f"LEVIR-CC layout: {os.path.join(args.out, ANNOTATION)}, {os.path.join(args.out, 'images')}"
        f"/<split>/{{A,B}}/, LEVIR-MCI token files in {os.path.join(args.out, MCI_FOLDER)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
