"""Retrieval evaluation: encode a split on the mesh, score it in tiles on the devices, compute recalls.

The N_img x N_txt similarity matrix is never built on the host: each jitted tile scores a block of
queries against all candidates on the devices and returns only the ranks.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rsjax import metrics, parallel

if TYPE_CHECKING:
  from rsjax.data.datasets import EvalSplit


def normalize_images(images: jax.Array) -> jax.Array:
  """uint8 [B, H, W, 3] -> float in [-1, 1]; done on the device to keep host work small."""
  return images.astype(jnp.float32) * (2.0 / 255.0) - 1.0


def encode_in_batches(encode: Callable, params, inputs: np.ndarray, batch_size: int,
                      mesh: Mesh) -> np.ndarray:
  """Runs a jitted `encode(params, x)` over `inputs` [N, ...] in padded global batches.

  Returns [N, E] float32 on the host."""
  dp = parallel.data_parallel_size(mesh)
  batch_size = max(dp, batch_size // dp * dp)
  out = []
  for start in range(0, len(inputs), batch_size):
    chunk = inputs[start: start + batch_size]
    pad = batch_size - len(chunk)
    if pad:  # keep one compiled shape; padded rows are dropped below
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)], 0)
    emb = encode(params, parallel.shard_batch({"x": chunk}, mesh)["x"])
    out.append(np.asarray(jax.device_get(emb))[: batch_size - pad])
  return np.concatenate(out, 0).astype(np.float32)


@jax.jit
def _t2i_tile(img_emb, txt_tile, owners):
  return metrics.text_to_image_ranks(img_emb @ txt_tile.T, owners)


@jax.jit
def _i2t_tile(img_tile, txt_emb, image_ids, text_to_image):
  return metrics.image_to_text_ranks(img_tile @ txt_emb.T, image_ids, text_to_image)


def _tiles(n: int, tile: int):
  for start in range(0, n, tile):
    yield start, min(start + tile, n)


def retrieval_ranks(img_emb: np.ndarray, txt_emb: np.ndarray, text_to_image: np.ndarray,
                    tile: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Ranks for both directions, computed tile by tile. Returns (i2t [N_img], t2i [N_txt])."""
  img = jnp.asarray(img_emb)
  txt = jnp.asarray(txt_emb)
  owners = jnp.asarray(text_to_image, jnp.int32)
  t2i = [_t2i_tile(img, txt[a:b], owners[a:b]) for a, b in _tiles(len(txt_emb), tile)]
  i2t = [_i2t_tile(img[a:b], txt, jnp.arange(a, b, dtype=jnp.int32), owners)
         for a, b in _tiles(len(img_emb), tile)]
  return np.concatenate(jax.device_get(i2t)), np.concatenate(jax.device_get(t2i))


def encoders(model) -> tuple[Callable, Callable]:
  """Jitted (params, uint8 images) -> embeddings and (params, ids) -> embeddings."""
  enc_img = jax.jit(lambda p, x: model.apply({"params": p}, normalize_images(x),
                                             method=model.encode_image))
  enc_txt = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode_text))
  return enc_img, enc_txt


def evaluate_split(model, params, split: "EvalSplit", mesh: Mesh, batch_size: int) -> dict[str, float]:
  """Encodes a split with `model` (a TwoTower) and returns R@1/5/10 both ways and mR (percent)."""
  enc_img, enc_txt = encoders(model)
  with jax.set_mesh(mesh):
    img_emb = encode_in_batches(enc_img, params, split.images, batch_size, mesh)
    txt_emb = encode_in_batches(enc_txt, params, split.tokens, batch_size, mesh)
  i2t, t2i = retrieval_ranks(img_emb, txt_emb, split.text_to_image)
  return metrics.retrieval_metrics(i2t, t2i)


def format_table(rows: dict[str, dict[str, float]]) -> str:
  """{'step 0': metrics, 'step 600': metrics} -> a markdown table of the recalls."""
  keys = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR"]
  lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
  for name, m in rows.items():
    lines.append(f"| {name} | " + " | ".join(f"{m[k]:.2f}" for k in keys) + " |")
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Hashing: Hamming ranking on the devices, one tile of queries at a time.


def hash_encoders(model) -> tuple[Callable, Callable]:
  """Jitted (params, uint8 images) -> packed codes uint8 [B, K/8], and (params, ids) -> codes."""
  enc_img = jax.jit(lambda p, x: model.apply({"params": p}, normalize_images(x),
                                             method=model.hash_image))
  enc_txt = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.hash_text))
  return enc_img, enc_txt


def unpack_signs(packed: np.ndarray, bits: int) -> np.ndarray:
  """uint8 [N, K/8] (np.packbits order) -> {-1, +1} float32 [N, K]."""
  on = np.unpackbits(np.asarray(packed, np.uint8), axis=1)[:, :bits]
  return np.where(on > 0, 1.0, -1.0).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("ks", "bits"))
def _hash_tile(q_codes, db_codes, q_ids, db_ids, ks, bits):
  dist = metrics.hamming_from_codes(q_codes, db_codes)
  relevant = q_ids[:, None] == db_ids[None, :]
  return metrics.hamming_ranking_stats(dist, relevant, ks, bits)


def hashing_metrics(q_codes: np.ndarray, db_codes: np.ndarray, q_ids: np.ndarray,
                    db_ids: np.ndarray, tile: int = 256,
                    ks: Sequence[int | None] = metrics.HASH_KS) -> dict:
  """mAP@K, P@K, precision within radius 2 and the PR curve of Hamming ranking (percent).

  q_codes [Q, K], db_codes [N, K] in {-1, +1}; a query and an item are relevant when their ids
  ([Q], [N] int) are equal. Queries are scored `tile` at a time on the devices; only per-query
  statistics come back to the host. K larger than N is cut to N (the name keeps the asked K)."""
  n, bits = db_codes.shape
  names = tuple("all" if k is None else k for k in ks)
  cut = tuple(n if k is None else min(k, n) for k in ks)
  uniq = tuple(sorted(set(cut)))
  db = jnp.asarray(db_codes, jnp.float32)
  db_ids_dev = jnp.asarray(db_ids, jnp.int32)
  parts = []
  for a, b in _tiles(len(q_codes), tile):
    parts.append(jax.device_get(_hash_tile(jnp.asarray(q_codes[a:b], jnp.float32), db,
                                           jnp.asarray(q_ids[a:b], jnp.int32), db_ids_dev,
                                           uniq, bits)))
  stats = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
  for k, c in zip(ks, cut, strict=True):  # stats are keyed by the cut-off actually used
    stats[f"ap@{k}"], stats[f"p@{k}"] = stats[f"ap@{c}"], stats[f"p@{c}"]
  return metrics.summarize_hashing(stats, tuple(ks), names)


def duch_query_split(n: int, seed: int = 0, query_fraction: float = 0.2):
  """DUCH protocol on a held-out set of n items: 20% queries, 80% retrieval set (seeded).

  Returns (query indices, retrieval indices), each sorted."""
  order = np.random.default_rng(seed).permutation(n)
  n_q = max(1, int(round(n * query_fraction)))
  return np.sort(order[:n_q]), np.sort(order[n_q:])


def evaluate_hashing(img_codes: np.ndarray, txt_codes: np.ndarray, text_to_image: np.ndarray,
                     image_labels: np.ndarray | None = None, seed: int = 0,
                     tile: int = 256) -> dict:
  """Cross-modal hashing metrics in both directions.

  Relevance by pairing over the whole split (an image and its own captions). With scene labels
  [M] also relevance by label under the DUCH split: image queries against the captions of the
  retrieval images, and captions of the query images against the retrieval images."""
  m = len(img_codes)
  own = np.arange(m)
  out = {"pairing": {
      "i2t": hashing_metrics(img_codes, txt_codes, own, text_to_image, tile),
      "t2i": hashing_metrics(txt_codes, img_codes, text_to_image, own, tile)}}
  if image_labels is not None:
    labels = np.asarray(image_labels)
    queries, retrieval = duch_query_split(m, seed)
    q_txt = np.flatnonzero(np.isin(text_to_image, queries))
    db_txt = np.flatnonzero(np.isin(text_to_image, retrieval))
    text_labels = labels[text_to_image]
    out["label"] = {
        "i2t": hashing_metrics(img_codes[queries], txt_codes[db_txt], labels[queries],
                               text_labels[db_txt], tile),
        "t2i": hashing_metrics(txt_codes[q_txt], img_codes[retrieval], text_labels[q_txt],
                               labels[retrieval], tile)}
  return out


# ---------------------------------------------------------------------------------------------
# Zero-shot scene classification.

DEFAULT_TEMPLATES = (
    "a satellite image of {}.",
    "an aerial photograph of {}.",
    "a remote sensing image of {}.",
    "{}",
)


def class_text(name: str) -> str:
  """A class name as it reads in a caption: 'dense_residential' -> 'dense residential'."""
  return name.replace("_", " ").replace("-", " ").strip().lower()


def class_embeddings(enc_txt: Callable, params, tokenizer, class_names: Sequence[str],
                     templates: Sequence[str], context_length: int, mesh: Mesh,
                     batch_size: int) -> np.ndarray:
  """Mean of the unit-norm prompt embeddings of each class, renormalised: [C, E]."""
  prompts = [t.format(class_text(c)) for c in class_names for t in templates]
  ids = tokenizer.encode(prompts, context_length)
  with jax.set_mesh(mesh):
    emb = encode_in_batches(enc_txt, params, ids, batch_size, mesh)
  emb = emb.reshape(len(class_names), len(templates), -1).mean(1)
  return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def zero_shot(model, params, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
              tokenizer, context_length: int, mesh: Mesh, batch_size: int,
              templates: Sequence[str] = DEFAULT_TEMPLATES) -> dict:
  """Top-1 zero-shot accuracy of images [N, H, W, 3] uint8 with labels [N] (percent)."""
  enc_img, enc_txt = encoders(model)
  classes = class_embeddings(enc_txt, params, tokenizer, class_names, templates, context_length,
                             mesh, batch_size)
  with jax.set_mesh(mesh):
    img = encode_in_batches(enc_img, params, images, batch_size, mesh)
  pred = np.asarray(metrics.zero_shot_predictions(jnp.asarray(img), jnp.asarray(classes)))
  out = metrics.classification_metrics(pred, labels, list(class_names))
  out.update(num_images=int(len(images)), num_classes=len(class_names), templates=list(templates))
  return out


# ---------------------------------------------------------------------------------------------
# One split, everything: recalls, hashing, a retrieval gallery for the report.


def gallery(img_emb: np.ndarray, txt_emb: np.ndarray, split: "EvalSplit", queries: int = 4,
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


def evaluate_split_full(model, params, split: "EvalSplit", mesh: Mesh, batch_size: int,
                        image_labels: np.ndarray | None = None,
                        with_gallery: bool = False) -> dict:
  """R@1/5/10 and mR, plus hashing metrics when the model has a hashing head."""
  enc_img, enc_txt = encoders(model)
  with jax.set_mesh(mesh):
    img_emb = encode_in_batches(enc_img, params, split.images, batch_size, mesh)
    txt_emb = encode_in_batches(enc_txt, params, split.tokens, batch_size, mesh)
  i2t, t2i = retrieval_ranks(img_emb, txt_emb, split.text_to_image)
  out = {"retrieval": metrics.retrieval_metrics(i2t, t2i),
         "num_images": int(len(split.images)), "num_captions": int(len(split.tokens))}
  bits = model.config.hashing.bits
  if bits:
    h_img, h_txt = hash_encoders(model)
    with jax.set_mesh(mesh):
      img_codes = encode_in_batches(h_img, params, split.images, batch_size, mesh)
      txt_codes = encode_in_batches(h_txt, params, split.tokens, batch_size, mesh)
    out["hashing"] = evaluate_hashing(unpack_signs(img_codes.astype(np.uint8), bits),
                                      unpack_signs(txt_codes.astype(np.uint8), bits),
                                      split.text_to_image, image_labels)
    out["hashing"]["bits"] = bits
  if with_gallery:
    out["gallery"] = gallery(img_emb, txt_emb, split)
  return out


# ---------------------------------------------------------------------------------------------
# Trained models for eval / index / search.


def checkpoint_dir(path: str) -> str:
  """A workdir (with checkpoints/) or a checkpoints folder -> the checkpoints folder."""
  inner = os.path.join(path, "checkpoints")
  return inner if os.path.isdir(inner) else path


def load_model(config, checkpoint: str, mesh: Mesh, step: int | None = None):
  """(model, params, step) from the latest (or given) checkpoint under `checkpoint`."""
  from rsjax.checkpoint import Checkpointer
  from rsjax.train import create_model, make_optimizer, state_layout

  ckpt = Checkpointer(checkpoint_dir(checkpoint))
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory}; train first")
    model = create_model(config)
    abstract, _ = state_layout(model, make_optimizer(config.train), config, mesh)
    state = ckpt.restore(step, abstract)
  finally:
    ckpt.close()
  return model, state.params, int(step)


def tokenizer_path(checkpoint: str, given: str | None = None) -> str:
  """The run's SentencePiece model: `given`, else tokenizer.model in the workdir."""
  if given:
    path = given
  else:
    base = os.path.abspath(checkpoint)
    workdir = base if os.path.isdir(os.path.join(base, "checkpoints")) else os.path.dirname(base)
    path = os.path.join(workdir, "tokenizer.model")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"tokenizer {path} not found; pass --tokenizer PATH (the "
                            "tokenizer.model the model was trained with)")
  return path
