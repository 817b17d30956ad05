"""The `gallery` evaluator: a few text queries with their top images, for `rsjax report`."""

from __future__ import annotations

import numpy as np

NAME = "gallery"


def gallery(img_emb: np.ndarray, txt_emb: np.ndarray, split, queries: int = 4,
            top: int = 5) -> dict:
  """Text -> image examples: `queries` captions spread over the split, their `top` images.

  Returns {'captions' [Q], 'images' uint8 [Q, top, H, W, 3], 'hit' bool [Q, top], 'scores'}."""
  picks = np.linspace(0, len(txt_emb) - 1, num=min(queries, len(txt_emb))).astype(int)
  scores = txt_emb[picks] @ img_emb.T
  order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
  return {"captions": np.asarray([split.captions[i] for i in picks]),
          "images": split.images[order],
          "hit": order == split.text_to_image[picks][:, None],
          "scores": np.take_along_axis(scores, order, 1).astype(np.float32)}


def unavailable(ctx) -> str | None:
  return None


def evaluate(ctx) -> dict:
  return gallery(ctx.encodings.image_emb, ctx.encodings.text_emb, ctx.split)


def summary(result: dict) -> str:
  return f"gallery of {len(result['captions'])} text queries"
