"""The `gallery` evaluator: a few text queries with their top images and where each image matches
its query (word–region heat maps, rsjax/evaluation/heatmaps.py), for `rsjax report`."""

from __future__ import annotations

import numpy as np

NAME = "gallery"


def gallery(img_emb: np.ndarray, txt_emb: np.ndarray, split, queries: int = 4,
            top: int = 5) -> dict:
  """Text -> image examples: `queries` captions spread over the split, their `top` images.

  Returns {'captions' [Q], 'images' uint8 [Q, top, H, W, 3], 'hit' bool [Q, top], 'scores',
  'picks' [Q] (the captions' rows in the split)}."""
  picks = np.linspace(0, len(txt_emb) - 1, num=min(queries, len(txt_emb))).astype(int)
  scores = txt_emb[picks] @ img_emb.T
  order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
  return {"captions": np.asarray([split.captions[i] for i in picks]),
          "images": split.images[order],
          "hit": order == split.text_to_image[picks][:, None],
          "scores": np.take_along_axis(scores, order, 1).astype(np.float32),
          "picks": picks.astype(np.int32)}


def query_maps(maker, images: np.ndarray, ids: np.ndarray) -> np.ndarray:
  """Each query's whole-query heat map on each of its top images: images uint8 [Q, top, H, W, 3],
  the queries' ids [Q, L] -> float16 [Q, top, H, W] (the maker's method: occlusion score drops
  by default; float16 keeps the npz small)."""
  q, top = images.shape[:2]
  flat = images.reshape(q * top, *images.shape[2:])
  maps, _ = maker.query_maps(flat, np.repeat(ids, top, axis=0))
  return maps.reshape(q, top, *maps.shape[1:]).astype(np.float16)


def unavailable(ctx) -> str | None:
  return None


def evaluate(ctx) -> dict:
  from rsjax.evaluation import heatmaps

  out = gallery(ctx.encodings.image_emb, ctx.encodings.text_emb, ctx.split)
  if heatmaps.supports(ctx.model):
    maker = heatmaps.MapMaker(ctx.model, ctx.params, ctx.mesh, ctx.batch_size)
    out["maps"] = query_maps(maker, out["images"], ctx.split.tokens[out["picks"]])
  return out


def summary(result: dict) -> str:
  maps = " with heat maps" if "maps" in result else ""
  return f"gallery of {len(result['captions'])} text queries{maps}"
