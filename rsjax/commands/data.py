"""`rsjax data`: prepare data sets (TFDS array_record), train their tokenizer, convert web corpora.

  rsjax data prepare NAME --manual-dir DIR --data-dir DIR [--skip-bad-records]
  rsjax data tokenizer NAME --data-dir DIR [--vocab-size 8000]
  rsjax data convert {webdataset,parquet} SOURCE... --out DIR [--image-dir DIR]
"""

from __future__ import annotations

import os

from rsjax.errors import InputError


def _prepare(args) -> int:
  from rsjax.data import tfds_builders

  path = tfds_builders.prepare(args.name, os.path.abspath(args.manual_dir),
                               os.path.abspath(args.data_dir), args.skip_bad_records,
                               args.caption_field)
  info = tfds_builders.load_prepared(path).info
  counts = ", ".join(f"{s} {v.num_examples}" for s, v in sorted(info.splits.items()))
  print(f"prepared {args.name} in {path}: {counts}; "
        f"{info.metadata.get('num_bad_records', 0)} bad record(s) skipped")
  return 0


def _tokenizer(args) -> int:
  from rsjax.data import tfds_builders, tokenizer_files

  path = os.path.join(os.path.abspath(args.data_dir), args.name)
  versions = sorted(os.listdir(path)) if os.path.isdir(path) else []
  if not versions:
    raise InputError(f"no prepared set {args.name!r} in {args.data_dir} (run `rsjax data "
                     "prepare` first)")
  prepared = os.path.join(path, versions[-1])
  model = tokenizer_files.train_for_prepared(tfds_builders.load_prepared(prepared),
                                             prepared, args.vocab_size, args.split)
  print(f"tokenizer written to {model}\nuse it with: --set data.tokenizer_path={model}")
  return 0


def _convert(args) -> int:
  from rsjax.data import webscale

  out = webscale.convert(args.kind, args.sources, args.out, image_dir=args.image_dir,
                         image_column=args.image_column, caption_column=args.caption_column,
                         shard_size=args.shard_size, skip_bad_records=args.skip_bad_records)
  print(f"converted to {out}")
  return 0


def run(args) -> int:
  return {"prepare": _prepare, "tokenizer": _tokenizer, "convert": _convert}[args.action](args)


def register(sub) -> None:
  p = sub.add_parser("data", help="prepare data sets, train tokenizers, convert web corpora")
  actions = p.add_subparsers(dest="action", required=True)

  prep = actions.add_parser("prepare", help="build a TFDS (array_record) data set from local files")
  prep.add_argument("name", help="rsicd, ucm_captions, sydney_captions, rsitmd, nwpu_captions, "
                    "levir_cc, rsscn7, rsicd_samples, ..., or captions_jsonl / image_folder")
  prep.add_argument("--manual-dir", required=True, help="folder with the annotations and images")
  prep.add_argument("--data-dir", required=True, help="where prepared data sets are written")
  prep.add_argument("--skip-bad-records", action="store_true",
                    help="skip missing/corrupt images and bad annotations, listing them")
  prep.add_argument("--caption-field", default="captions",
                    help="captions.jsonl field to read (e.g. captions_corrected)")

  tok = actions.add_parser("tokenizer", help="train a SentencePiece model on a prepared set")
  tok.add_argument("name")
  tok.add_argument("--data-dir", required=True)
  tok.add_argument("--vocab-size", type=int, default=8000)
  tok.add_argument("--split", default="train")

  conv = actions.add_parser("convert", help="stream webdataset tars / parquet into array_record")
  conv.add_argument("kind", choices=("webdataset", "parquet"))
  conv.add_argument("sources", nargs="+", help="tar shards, or parquet files")
  conv.add_argument("--out", required=True)
  conv.add_argument("--image-dir", default="", help="parquet: folder the image paths are under")
  conv.add_argument("--image-column", default="image", help="parquet: image path/bytes column")
  conv.add_argument("--caption-column", default="caption", help="parquet: caption column")
  conv.add_argument("--shard-size", type=int, default=10000, help="records per output shard")
  conv.add_argument("--skip-bad-records", action="store_true")
  p.set_defaults(run=run)
