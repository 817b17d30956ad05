"""`rsjax index`: encode an image archive into a dense and a binary index (or append to one).

--images indexes single images; --pairs BEFORE AFTER (or --images over a captions.jsonl whose rows
name image_a / image_b) indexes before/after pairs with a change encoder (model.temporal), whose
rows `rsjax search` then returns as pairs."""

from __future__ import annotations

import os

from rsjax.commands.common import load_config_or_exit


def run(args) -> int:
  config = load_config_or_exit(args)
  import jax
  import numpy as np
  from tqdm import tqdm

  from rsjax import index, parallel, runs, search_inputs
  from rsjax.console import log
  from rsjax.data import records
  from rsjax.errors import InputError
  from rsjax.evaluation import encode
  from rsjax.serve import geo

  if os.path.exists(args.out) and not os.path.isdir(args.out):
    raise InputError(f"--out {args.out} is a file, not an index folder")
  tokenizer = runs.tokenizer_path(args.checkpoint, args.tokenizer)
  if args.chunk_size < 1 or args.batch_size < 1 or args.workers < 1:
    raise InputError(f"--chunk-size, --batch-size and --workers must be >= 1, got "
                     f"{args.chunk_size}, {args.batch_size} and {args.workers}")
  from rsjax.models.temporal import is_temporal

  if (args.images is None) == (args.pairs is None):
    raise InputError("give the archive as --images DIR or --pairs BEFORE_DIR AFTER_DIR")
  parallel.initialize_distributed()  # a multi-host launch: every process encodes, process 0 writes
  writer = jax.process_index() == 0
  bad = records.BadRecords() if args.skip_bad else None
  if args.pairs:
    paths = search_inputs.list_pairs(*args.pairs, bad=bad)
  else:
    paths = search_inputs.list_images(args.images, skip_bad=args.skip_bad)
  pairs = isinstance(paths[0], tuple)
  if pairs != is_temporal(config.model):
    raise InputError(
        f"{' '.join(args.pairs) if args.pairs else args.images}: "
        + ("before/after pairs need a change encoder (a config with model.temporal)" if pairs
           else "this model is a change encoder (model.temporal); index before/after pairs with "
           "--pairs BEFORE_DIR AFTER_DIR"))
  resume = _unfinished_run(args.out, paths)
  exists = os.path.exists(os.path.join(args.out, "index.json"))
  parallel.barrier("rsjax index: the index folder read")  # before process 0 writes to it
  if resume is None and args.append and not exists:
    raise index.IndexFileError(f"--append: {args.out} holds no index yet")
  if resume is None and not args.append and exists:
    raise index.IndexFileError(f"{args.out} already holds an index; pass --append to add to it, "
                               "or choose another --out")
  mesh = parallel.make_mesh(config)
  model, params, step = runs.load_model(config, args.checkpoint, mesh)
  identity = index.model_identity(config, runs.checkpoint_dir(args.checkpoint), step, params,
                                  tokenizer)
  if exists:  # refuse a mismatched model before encoding anything
    index.check_identity(index.read_meta(args.out), identity, args.out)
  done = resume or 0
  if done and writer:
    print(f"index {args.out}: resuming an unfinished run of these {len(paths)} images at image "
          f"{done}", flush=True)
  enc_img, _ = encode.encoders(model)
  bits = config.model.hashing.bits
  hash_img = encode.hash_encoders(model)[0] if bits else None
  size = config.data.image_size
  building = {"images_digest": index.images_digest(paths), "total": len(paths)}
  archive = args.pairs[1] if args.pairs else args.images  # footprints: the after images'
  meta, added = None, 0
  # One chunk per --chunk-size images, each written atomically with index.json last: a run that
  # is interrupted keeps every finished chunk, and the same command resumes after the last one.
  with jax.set_mesh(mesh), tqdm(total=len(paths), initial=done, unit="img", desc="index",
                                disable=args.quiet or not writer) as bar:
    for lo in range(done, len(paths), args.chunk_size):
      chunk_paths = paths[lo: lo + args.chunk_size]
      # Rows of a chunk whose images were all skipped: empty arrays of the model's widths.
      dense, codes, kept = [np.zeros((0, config.model.embed_dim), np.float32)], [], []
      if hash_img is not None:
        codes.append(np.zeros((0, -(-bits // 8)), np.uint8))
      batches = search_inputs.batches(chunk_paths, size, args.batch_size, bad, args.workers)
      for start, (images, batch_paths) in zip(range(0, len(chunk_paths), args.batch_size),
                                              batches):
        bar.update(len(chunk_paths[start: start + args.batch_size]))  # skipped ones included
        if not batch_paths:
          continue
        kept += batch_paths
        dense.append(encode.encode_in_batches(enc_img, params, images, args.batch_size, mesh))
        if hash_img is not None:
          codes.append(encode.encode_in_batches(hash_img, params, images, args.batch_size,
                                                mesh).astype(np.uint8))
      finished = lo + len(chunk_paths) == len(paths)
      if not writer or (not kept and not os.path.exists(os.path.join(args.out, "index.json"))):
        added += len(kept)
        continue  # process 0 writes; no index is started with an empty chunk
      meta = index.write_chunk(
          args.out, identity, kept, np.concatenate(dense),
          np.concatenate(codes) if codes else None, args.dtype,
          append=os.path.exists(os.path.join(args.out, "index.json")),
          building=None if finished else {**building, "done": lo + len(chunk_paths)},
          footprints=geo.footprints_for([p[-1] if pairs else p for p in kept], archive))
      added += len(kept)
  if not writer:
    return 0
  if bad is not None and len(bad):
    log(bad.summary())
  if meta is None:
    raise records.NoRecordsError(f"{archive}: no images to index: all {len(paths)} were bad "
                                 f"({bad.kinds()}; listed above)" if bad else
                                 f"no images to add in {archive}")
  if args.ann:
    from rsjax import search_ann
    meta = search_ann.build(index.load(args.out, verify=False),
                            log=(lambda _: None) if args.quiet else log)
  total = sum(c["rows"] for c in meta["chunks"])
  what = "pairs" if pairs else "images"
  print(f"index {args.out}: {added} {what} added, {total} in {len(meta['chunks'])} chunk(s); "
        f"dense {meta['dense_dtype']} x {meta['dim']}, "
        f"{'%d-bit codes' % meta['bits'] if meta['bits'] else 'no binary codes'}; "
        f"model step {step}" + (f"; {len(bad)} bad {what[:-1]}(s) skipped" if bad else "")
        + ("; approximate-search graph (usearch HNSW) built" if args.ann else ""))
  return 0


def _unfinished_run(out: str, paths: list[str]) -> int | None:
  """Images already indexed by an interrupted run of the same image list into `out`, else None.

  An unfinished run of another image list is refused: resuming it with these images would mix
  the two."""
  from rsjax import index

  if not os.path.exists(os.path.join(out, "index.json")):
    return None
  building = index.read_meta(out).get("building")
  if building is None:
    return None
  if building["images_digest"] != index.images_digest(paths):
    raise index.IndexFileError(
        f"{out} holds an unfinished index run of another image list ({building['done']} of "
        f"{building['total']} images); rerun that command to finish it, or choose another --out")
  return int(building["done"])


def register(sub) -> None:
  p = sub.add_parser("index", help="encode an image folder or data set into a search index")
  p.add_argument("--config", required=True, help="the model's config, configs/NAME.py[:arg]")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override a config value (repeatable)")
  p.add_argument("--checkpoint", required=True, help="a run's workdir or its checkpoints folder")
  p.add_argument("--images", default=None,
                 help="a folder of images (searched recursively) or a data set with captions.jsonl")
  p.add_argument("--pairs", nargs=2, default=None, metavar=("BEFORE_DIR", "AFTER_DIR"),
                 help="before/after pairs for a change encoder: two folders whose images are "
                 "matched by their path below each")
  p.add_argument("--out", required=True, help="the index folder to create (or to append to)")
  p.add_argument("--append", action="store_true", help="add the images to an existing index")
  p.add_argument("--dtype", default="float16", choices=("float16", "float32"),
                 help="storage of the dense vectors (default float16)")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                 help="threads reading and decoding images while the model encodes (default "
                 "min(4, CPUs))")
  p.add_argument("--ann", action="store_true",
                 help="also build an approximate-search graph (usearch HNSW) over all dense rows, "
                 "for `rsjax search --ann` / large archives")
  p.add_argument("--chunk-size", type=int, default=20000,
                 help="images per chunk file; an interrupted run resumes after the last chunk")
  p.add_argument("--tokenizer", default=None,
                 help="tokenizer.model for queries (default: the one in the run's workdir)")
  p.add_argument("--skip-bad", action="store_true",
                 help="leave out images that cannot be read (and bad annotation lines), listing "
                 "them, instead of stopping at the first")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(run=run)
