"""The `retrieval` evaluator: R@1/5/10 both ways and mR, scored on the devices in tiles.

The N_img x N_txt similarity matrix is never built on the host: each jitted tile scores a block of
queries against all candidates on the devices and returns only the ranks.
"""

from __future__ import annotations

from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from rsjax import metrics

NAME = "retrieval"
RECALL_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR")


@jax.jit
def _t2i_tile(img_emb, txt_tile, owners):
  return metrics.text_to_image_ranks(img_emb @ txt_tile.T, owners)


@jax.jit
def _i2t_tile(img_tile, txt_emb, image_ids, text_to_image):
  return metrics.image_to_text_ranks(img_tile @ txt_emb.T, image_ids, text_to_image)


def tiles(n: int, tile: int) -> Iterator[tuple[int, int]]:
  """(start, end) of consecutive blocks of `tile` rows covering range(n)."""
  for start in range(0, n, tile):
    yield start, min(start + tile, n)


def retrieval_ranks(img_emb: np.ndarray, txt_emb: np.ndarray, text_to_image: np.ndarray,
                    tile: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Ranks for both directions, computed tile by tile. Returns (i2t [N_img], t2i [N_txt])."""
  img = jnp.asarray(img_emb)
  txt = jnp.asarray(txt_emb)
  owners = jnp.asarray(text_to_image, jnp.int32)
  t2i = [_t2i_tile(img, txt[a:b], owners[a:b]) for a, b in tiles(len(txt_emb), tile)]
  i2t = [_i2t_tile(img[a:b], txt, jnp.arange(a, b, dtype=jnp.int32), owners)
         for a, b in tiles(len(img_emb), tile)]
  return np.concatenate(jax.device_get(i2t)), np.concatenate(jax.device_get(t2i))


def unavailable(ctx) -> str | None:
  return None  # every split has images and captions


def evaluate(ctx) -> dict[str, float]:
  """R@1/5/10 both ways and mR (percent) of ctx.split."""
  enc = ctx.encodings
  i2t, t2i = retrieval_ranks(enc.image_emb, enc.text_emb, ctx.split.text_to_image)
  return metrics.retrieval_metrics(i2t, t2i)


def format_table(rows: dict[str, dict[str, float]]) -> str:
  """{'step 0': metrics, 'step 600': metrics} -> a markdown table of the recalls."""
  lines = ["| model | " + " | ".join(RECALL_KEYS) + " |", "|---" * (len(RECALL_KEYS) + 1) + "|"]
  for name, m in rows.items():
    lines.append(f"| {name} | " + " | ".join(f"{m[k]:.2f}" for k in RECALL_KEYS) + " |")
  return "\n".join(lines)


def summary(result: dict[str, float]) -> str:
  """One log line: mR and the six recalls."""
  r = result
  return (f"mR {r['mR']:.2f} (R@1/5/10 i2t {r['i2t_r1']:.1f}/{r['i2t_r5']:.1f}/"
          f"{r['i2t_r10']:.1f}, t2i {r['t2i_r1']:.1f}/{r['t2i_r5']:.1f}/{r['t2i_r10']:.1f})")
