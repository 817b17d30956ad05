"""`rsjax search INDEX "query text"`: the top-k images of an index for a text query (of a pair
index, the top-k before/after pairs: "before -> after" in the table, "before" / "after" in JSON)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from rsjax.errors import InputError


def run(args) -> int:
  import jax
  import ml_collections
  import numpy as np

  from rsjax import index, parallel, runs, search
  from rsjax.evaluation import encode
  from rsjax.data.tokenizers import SentencePieceTokenizer

  if args.k < 1 or args.rerank < 0:
    raise InputError(f"--k must be >= 1 and --rerank >= 0, got --k {args.k} --rerank {args.rerank}")
  empty = [i + 1 for i, q in enumerate(args.query) if not q.strip()]
  if empty:
    raise InputError(f"query {', '.join(map(str, empty))} is empty; give some text to search for")
  if args.ann and args.binary:
    raise InputError("--ann searches the dense vectors approximately; drop --binary or --ann")
  if args.ann:
    from rsjax import search_ann
    idx = search_ann.load(args.index, verify=not args.no_verify)
  else:
    idx = index.load(args.index, verify=not args.no_verify)
  meta = idx.meta["model"]
  if args.binary and idx.codes is None:
    raise index.IndexFileError(f"index {args.index} has no binary codes (built with a model "
                               "without a hashing head); drop --binary")
  if not meta["tokenizer"] or not os.path.isfile(meta["tokenizer"]):
    raise index.IndexFileError(f"tokenizer {meta['tokenizer']} of index {args.index} is gone; "
                               "rebuild the index")
  if meta["tokenizer_digest"] != index.file_digest(meta["tokenizer"]):
    raise index.IndexFileError(f"tokenizer {meta['tokenizer']} changed since the index was built")
  if "building" in idx.meta:
    b = idx.meta["building"]
    print(f"rsjax search: warning: index {args.index} is unfinished ({b['done']} of {b['total']} "
          "images); rerun its `rsjax index` command to finish it", file=sys.stderr)
  config = ml_collections.ConfigDict(meta["config"])
  mesh = parallel.make_mesh(config)
  model, params, step = runs.load_model(config, meta["checkpoint"], mesh, step=meta["step"])
  if index.params_digest(params) != meta["params_digest"]:
    raise index.IndexFileError(f"checkpoint {meta['checkpoint']} step {step} no longer holds the "
                               "parameters this index was built with; rebuild the index")
  tokens = query_tokens(SentencePieceTokenizer(meta["tokenizer"]), args.query,
                        config.model.text.context_length)
  _, enc_txt = encode.encoders(model)
  with jax.set_mesh(mesh):
    q_dense = encode.encode_in_batches(enc_txt, params, tokens, len(tokens), mesh)
    q_codes = None
    if args.binary:
      q_codes = encode.encode_in_batches(encode.hash_encoders(model)[1], params, tokens,
                                           len(tokens), mesh).astype(np.uint8)
  sharded = None
  if not args.ann and (args.sharded or (args.sharded is None and jax.default_backend() != "cpu")):
    sharded = search.ShardedSearch(search.rows_mesh(), dense=idx.dense if not args.binary else None,
                                   words=idx.words if args.binary else None, bits=idx.bits or None)
  scores, rows = idx.search(q_dense, q_codes, k=args.k, binary=args.binary,
                            rerank=args.rerank if args.binary else 0, sharded=sharded, ann=args.ann)
  label = "hamming" if args.binary and not args.rerank else "score"
  results = []
  for qi, text in enumerate(args.query):
    hits = [{"rank": r + 1, label: float(scores[qi, r]), **_where(idx.paths[rows[qi, r]])}
            for r in range(args.k) if rows[qi, r] >= 0]
    results.append({"query": text, "results": hits})
  if args.json:
    print(json.dumps(results if len(results) > 1 else results[0], indent=1))
  else:
    for res in results:
      print(f"# {res['query']}")
      for h in res["results"]:
        value = f"{h[label]:.0f}" if label == "hamming" else f"{h[label]:.4f}"
        where = h["path"] if "path" in h else f"{h['before']} -> {h['after']}"
        print(f"{h['rank']:>4}  {value:>8}  {where}")
  return 0


def _where(entry) -> dict:
  """An index row's files: {"path"} of an image, {"before", "after"} of a pair."""
  return {"path": entry} if isinstance(entry, str) else {"before": entry[0], "after": entry[-1]}


def query_tokens(tokenizer, queries: list[str], context_length: int):
  """[Q, context_length] ids; a query longer than the text tower reads is cut, with a warning
  naming it (the tower sees only its first context_length - 1 pieces)."""
  tokens, lengths = tokenizer.encode_with_lengths(queries, context_length)
  for q, n in zip(queries, lengths):
    if n > context_length - 1:
      print(f"rsjax search: warning: query {q[:40]!r}{'...' if len(q) > 40 else ''} is {n} "
            f"tokens; the model reads the first {context_length - 1} (model.text.context_length "
            f"{context_length}), so the rest is ignored", file=sys.stderr)
  return tokens


def register(sub) -> None:
  p = sub.add_parser("search", help="search an index by text")
  p.add_argument("index", help="an index folder made by `rsjax index`")
  p.add_argument("query", nargs="+", help="query text (several: one search each)")
  p.add_argument("--k", type=int, default=20, help="how many results (default 20)")
  p.add_argument("--binary", action="store_true",
                 help="Hamming ranking of the hash codes (popcount over 64-bit words)")
  p.add_argument("--rerank", type=int, default=0, metavar="N",
                 help="with --binary: re-rank the N nearest codes by dense score")
  p.add_argument("--sharded", action=argparse.BooleanOptionalAction, default=None,
                 help="split the index rows across the devices (default: on accelerators)")
  p.add_argument("--ann", action="store_true",
                 help="approximate dense search through the index's HNSW graph (built by "
                 "`rsjax index --ann`): faster on large archives, recall@10 below 1")
  p.add_argument("--json", action="store_true", help="print JSON instead of a table")
  p.add_argument("--no-verify", action="store_true", help="skip the CRC-32 check of the files")
  p.set_defaults(run=run)
