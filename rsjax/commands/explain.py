"""`rsjax explain CHECKPOINT IMAGE "text"`: where in the image the text matches, as a PNG.

The figure holds the image, the whole query's heat map over it and, with --words, one map per word
of the query (rsjax/evaluation/heatmaps.py): by default how much the score falls when each window
is hidden (--method occlusion), or the cosine of the query with each region (--method cosine).
All maps share one colour scale, so words compare.
"""

from __future__ import annotations

import os
import sys

from rsjax.errors import InputError

COLUMNS = 6  # panels per row of the figure
METHODS = ("occlusion", "cosine")  # heatmaps.METHODS, named here so that --help imports no JAX


def _config(args):
  """--config (with --set) when given, else the config the checkpoint was written with."""
  from rsjax import config as config_lib
  from rsjax import runs

  if args.config:
    return config_lib.load_config(args.config, args.set)
  if args.set:
    raise InputError("--set needs --config (the checkpoint's own config is used as it was saved)")
  return runs.run_config(args.checkpoint)


def _tokenizer(config, args):
  """The run's tokenizer: data.tokenizer_path (CLIP BPE or a SentencePiece model) when the config
  names one, else --tokenizer or the workdir's tokenizer.model."""
  from rsjax import runs
  from rsjax.data.tokenize import tokenizer_for
  from rsjax.data.tokenizers import SentencePieceTokenizer

  named = config.data.get("tokenizer_path", "")
  if named and not args.tokenizer:
    return tokenizer_for([], runs.run_workdir(args.checkpoint), config.model.text.vocab_size, named)
  return SentencePieceTokenizer(runs.tokenizer_path(args.checkpoint, args.tokenizer))


def figure_png(image, explanation, unit: str = "score drop when hidden") -> bytes:
  """uint8 image [H, W, 3] and its Explanation -> PNG bytes: the image, the whole-query map and
  each word's map, overlaid on one colour scale (score drop or cosine), with a colour bar."""
  import numpy as np

  from rsjax.report_gallery import overlay
  from rsjax.report_figures import png, pyplot

  plt = pyplot()
  panels = [("query", explanation.query), *explanation.words]
  lo = float(min(np.min(m) for _, m in panels))
  hi = float(max(np.max(m) for _, m in panels))
  cols = min(COLUMNS, 1 + len(panels))
  rows = -(-(1 + len(panels)) // cols)
  fig, grid = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows + 0.4), squeeze=False)
  axes = list(grid.ravel())
  axes[0].imshow(image)
  axes[0].set_title("image", fontsize=9)
  for ax, (name, heat) in zip(axes[1:], panels):
    ax.imshow(overlay(image, heat, lo=lo, hi=hi))
    ax.set_title(f"{name} (max {np.max(heat):.2f})" if name != "query" else
                 f"whole query (max {np.max(heat):.2f})", fontsize=9)
  for ax in axes:
    ax.set_axis_off()
  mappable = plt.cm.ScalarMappable(norm=plt.Normalize(lo, hi), cmap="inferno")
  fig.colorbar(mappable, ax=axes, shrink=0.8, label=unit)
  text = explanation.text if len(explanation.text) <= 90 else explanation.text[:87] + "..."
  fig.suptitle(f"{text!r}: score {explanation.score:.3f}", fontsize=10)
  return png(fig)


def run(args) -> int:
  if not args.text.strip():
    raise InputError("the text is empty; give the words to look for in the image")
  out = os.path.abspath(args.out)
  if os.path.isdir(out):
    raise InputError(f"--out {args.out} is a folder; give a PNG file name")
  if not os.path.isdir(os.path.dirname(out)):
    raise InputError(f"--out {args.out}: no folder {os.path.dirname(out)}")
  if not os.path.isfile(args.image):
    raise InputError(f"image {args.image} not found")

  from rsjax import runs

  if not runs.is_run_dir(args.checkpoint):
    raise InputError(f"{args.checkpoint}: no checkpoint there (give the --workdir of an "
                     "`rsjax train` run, or its checkpoints folder)")
  config = _config(args)
  size = config.data.image_size  # checked before the model loads
  for flag, value in (("--window", args.window), ("--stride", args.stride)):
    if value is not None and not 0 < value <= size:
      raise InputError(f"{flag} {value}: give a number of pixels from 1 to the image size {size}")

  from rsjax import atomic, parallel, search_inputs
  from rsjax.evaluation import heatmaps

  image = search_inputs.load_image(args.image, config.data.image_size)  # CorruptImageError
  tokenizer = _tokenizer(config, args)
  length = config.model.text.context_length
  ids, cut = tokenizer.encode_counting_cuts([args.text], length)  # SentencePiece and CLIP BPE
  if cut:
    print(f"rsjax explain: warning: the text is longer than the model reads "
          f"(model.text.context_length {length} tokens); the rest is ignored", file=sys.stderr)
  mesh = parallel.make_mesh(config)
  model, params, step = runs.load_model(config, args.checkpoint, mesh)
  if not heatmaps.supports(model):
    raise InputError(f"{args.checkpoint}: this model gives no region vectors for heat maps")
  maker = heatmaps.MapMaker(model, params, mesh, batch_size=config.eval.batch_size,
                            method=args.method, window=args.window, stride=args.stride)
  explanation = maker.explain(image, args.text, ids[0], tokenizer if args.words else None)
  unit = "cosine" if args.method == "cosine" else "score drop when hidden"
  atomic.write_bytes(out, figure_png(image, explanation, unit))
  words = f"; {len(explanation.words)} word maps" if args.words else ""
  print(f"wrote {out} (step {step}, score {explanation.score:.3f}, query map "
        f"{explanation.query.min():.3f}..{explanation.query.max():.3f}{words})")
  return 0


def register(sub) -> None:
  p = sub.add_parser("explain", help="heat map of where a text matches in an image (PNG)")
  p.add_argument("checkpoint", help="a run's workdir or its checkpoints folder")
  p.add_argument("image", help="an image file (resized to the model's data.image_size)")
  p.add_argument("text", help="the query text")
  p.add_argument("--out", default="explain.png", help="PNG to write (default explain.png)")
  p.add_argument("--words", action="store_true", help="also one map per word of the text")
  p.add_argument("--method", choices=METHODS, default=METHODS[0],
                 help="occlusion (default: the score drop when each window is hidden; lands on "
                      "the object) or cosine (query against each region's vector; one pass)")
  p.add_argument("--window", type=int, default=None,
                 help="occlusion window in pixels (default: the model's patch size)")
  p.add_argument("--stride", type=int, default=None,
                 help="occlusion stride in pixels (default: half the window, or all of it above 8 "
                      "windows per side)")
  p.add_argument("--config", default=None,
                 help="configs/NAME.py[:arg] (default: the config saved with the checkpoint)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override a value of --config (repeatable)")
  p.add_argument("--tokenizer", default=None,
                 help="the run's SentencePiece model (default: WORKDIR/tokenizer.model)")
  p.set_defaults(run=run)
