"""Word–region heat maps: where in an image a query, or each of its words, matches.

Two methods. "occlusion" (the default; rsjax/evaluation/occlusion.py) hides one window of the image
at a time and maps how far the retrieval score falls: it asks the pooled embedding that retrieval
ranks by, works for any encoder (a change encoder's map shows where the change matched) and lands
on the object a query names (benchmarks/heatmap_localisation.py). "cosine", below, is one encoder
pass and gives a map per pyramid level, but a trained model's patch tokens need not keep their own
position's content in the shared space, and on the benchmark its maps do not localise.

The image tower's pooled embedding comes from its tokens through ln_post and a projection; the same
two modules applied to every patch token give one vector per patch in the shared space
(`TwoTower.image_regions`), and with a feature pyramid one per region of each level (the trunk's
patch vector there plus what the level adds from that position alone). The text tower's
projection applied to each position gives one vector per token (`TwoTower.text_tokens`); a word's
vector is the sum of its pieces' vectors (the tokenizer's `words` names them; padding and start /
end tokens belong to no word). No parameter is added: a converted CLIP loads unchanged.

A map is the cosine between one query vector and every region vector,

    map[i, j] = <q / |q|, r_ij / |r_ij|>     q: the pooled text embedding, or a word's vector,

on the region grid [h, w], then resized bilinearly (half-pixel centres: a patch's value sits at
its centre, edges held) onto the image [H, W]. With a pyramid, a map is the mean of the trunk's
map and each level's map, each resized first. Cosines lie in [-1, 1] and compare across images.

`similarity_maps` and `upsample` take region vectors from any encoder: a pair (change) encoder's
per-region vectors of its fused tokens give "where the change matched" the same way.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from rsjax.evaluation.occlusion import occlusion_maps
from rsjax.pixels import normalize_images

EPS = 1e-6


def unit(x: np.ndarray) -> np.ndarray:
  """[..., E] -> rows of norm 1 (a zero row stays 0), float32."""
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), EPS)


def similarity_maps(regions: np.ndarray, queries: np.ndarray) -> np.ndarray:
  """Cosines of region vectors [N, h, w, E] with query vectors [N, Q, E] -> [N, Q, h, w]."""
  return np.einsum("nhwe,nqe->nqhw", unit(regions), unit(queries))


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Maps [..., h, w] -> [..., H, W], bilinear with half-pixel centres, float32."""
  maps = np.asarray(maps, np.float32)
  return np.asarray(jax.image.resize(maps, (*maps.shape[:-2], *size), "linear"))


def word_vectors(tokens: np.ndarray, spans: list[tuple[str, list[int]]]) -> np.ndarray:
  """Per-position vectors [L, E] and (word, positions) spans -> one summed vector per word [W, E]."""
  if not spans:
    return np.zeros((0, tokens.shape[-1]), np.float32)
  return np.stack([np.asarray(tokens)[positions].sum(0) for _, positions in spans])


def supports(model) -> bool:
  """Whether `model` gives region and token vectors (the two-tower ViT model does)."""
  return hasattr(model, "image_regions") and hasattr(model, "text_tokens")


@dataclasses.dataclass
class Explanation:
  """One (image, text) pair. Maps are [H, W] float32 on the image's pixels: score drops
  (occlusion) or cosines (cosine)."""
  text: str
  score: float                           # cosine of the pooled embeddings (the retrieval score)
  query: np.ndarray                      # [H, W] the whole query
  levels: dict[str, np.ndarray]          # cosine: "patches (stride 16)", "pyramid stride 4": [H, W]
  words: list[tuple[str, np.ndarray]]    # (word, [H, W]); empty unless asked for


def _region_fn(model):
  """Jitted (params, uint8 images [B, H, W, 3]) -> [B, 1 + R, E]: the pooled embedding, then every
  region vector of every level, flattened into one row per image (one array, so that
  encode_in_batches can carry it)."""
  def fn(params, images):
    out = model.apply({"params": params}, normalize_images(images), method=model.image_regions)
    batch = images.shape[0]
    parts = [out["embedding"][:, None], out["patches"].reshape(batch, -1, out["patches"].shape[-1])]
    for stride in sorted(out.get("regions", {})):
      r = out["regions"][stride]
      parts.append(r.reshape(batch, -1, r.shape[-1]))
    return jnp.concatenate([p.astype(jnp.float32) for p in parts], 1)
  return jax.jit(fn)


def _token_fn(model):
  """Jitted (params, ids [B, L]) -> [B, 1 + L, E]: the pooled embedding, then each position's."""
  def fn(params, ids):
    out = model.apply({"params": params}, ids, method=model.text_tokens)
    return jnp.concatenate([out["embedding"][:, None], out["tokens"]], 1).astype(jnp.float32)
  return jax.jit(fn)


def region_grids(model, params, image_size: int) -> list[tuple[str, tuple[int, int]]]:
  """(level name, grid (h, w)) of each region level, in the order _region_fn lays them out."""
  shapes = jax.eval_shape(
      lambda p, x: model.apply({"params": p}, x, method=model.image_regions), params,
      jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
  stride = model.config.image.patch_size
  grids = [(f"patches (stride {stride})", tuple(shapes["patches"].shape[1:3]))]
  for s in sorted(shapes.get("regions", {})):
    grids.append((f"pyramid stride {s}", tuple(shapes["regions"][s].shape[1:3])))
  return grids


METHODS = ("occlusion", "cosine")  # the first is the default (see the module docstring)


class MapMaker:
  """Heat maps for one model, by `method`: "occlusion" (rsjax/evaluation/occlusion.py: the score
  drop when a `window`-pixel square is hidden, every `stride` pixels; by default the patch size, and
  half of it up to 8 patches per side, else all of it, so that a map costs at most 225 encoder
  passes) or "cosine" (region vectors against the query, per level). Encoders run on the mesh in
  padded batches (multi-process safe, as the evaluation's are); the maps are made on the host."""

  def __init__(self, model, params, mesh, batch_size: int = 32, method: str = METHODS[0],
               window: int | None = None, stride: int | None = None):
    if method not in METHODS:
      raise ValueError(f"heat map method {method!r}: choose from {METHODS}")
    self.model, self.params, self.mesh, self.batch_size = model, params, mesh, batch_size
    self.method = method
    self.window = window or model.config.image.patch_size
    self.stride = stride

  @functools.cached_property
  def _fns(self):
    return _region_fn(self.model), _token_fn(self.model)

  @functools.cached_property
  def _image_fn(self):
    from rsjax.evaluation.encode import encoders
    return encoders(self.model)[0]

  def _encode(self, fn, inputs: np.ndarray) -> np.ndarray:
    from rsjax.evaluation.encode import encode_in_batches
    with jax.set_mesh(self.mesh):
      return encode_in_batches(fn, self.params, inputs, min(self.batch_size, len(inputs)),
                               self.mesh)

  def embed_images(self, images: np.ndarray) -> np.ndarray:
    """uint8 images [N, H, W, 3] (or date sequences [N, T, H, W, 3]) -> embeddings [N, E]."""
    return self._encode(self._image_fn, images)

  def regions(self, images: np.ndarray) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """uint8 images [N, H, W, 3] -> (pooled embeddings [N, E], [(level name, [N, h, w, E])])."""
    flat = self._encode(self._fns[0], images)
    levels, start = [], 1
    for name, (h, w) in region_grids(self.model, self.params, images.shape[1]):
      levels.append((name, flat[:, start: start + h * w].reshape(len(images), h, w, -1)))
      start += h * w
    return flat[:, 0], levels

  def tokens(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ids [N, L] -> (pooled embeddings [N, E], per-position vectors [N, L, E])."""
    flat = self._encode(self._fns[1], ids)
    return flat[:, 0], flat[:, 1:]

  def _occlusion(self, image: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    side = image.shape[-2]
    stride = self.stride or (max(1, self.window // 2) if side <= 8 * self.window else self.window)
    return occlusion_maps(self.embed_images, image, queries, self.window, stride)

  def query_maps(self, images: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of uint8 images [N, H, W, 3] (occlusion: or date sequences [N, T, H, W, 3]) and ids
    [N, L] -> (whole-query maps [N, H, W] float32, scores [N]: cosines of the pooled embeddings)."""
    txt_emb, _ = self.tokens(ids)
    if self.method == "occlusion":
      made = [self._occlusion(image, q[None]) for image, q in zip(images, txt_emb)]
      return (np.stack([m[0][0] for m in made]),
              np.asarray([m[1][0] for m in made], np.float32))
    img_emb, levels = self.regions(images)
    size = images.shape[1:3]
    maps = [upsample(similarity_maps(r, txt_emb[:, None])[:, 0], size) for _, r in levels]
    scores = np.sum(unit(img_emb) * unit(txt_emb), -1)
    return np.mean(maps, 0).astype(np.float32), scores.astype(np.float32)

  def explain(self, image: np.ndarray, text: str, ids: np.ndarray, tokenizer=None) -> Explanation:
    """One uint8 image [H, W, 3] and its query's ids [L] -> its Explanation; a `tokenizer` (with
    `words(ids)` and `encode`) adds one map per word of the query: occlusion scores each word
    as a query of its own, cosine by the word's summed token vectors."""
    spans = tokenizer.words(ids) if tokenizer is not None else []
    txt_emb, tok = self.tokens(ids[None])
    if self.method == "occlusion":
      queries = txt_emb
      if spans:
        word_ids = tokenizer.encode([w for w, _ in spans], ids.shape[-1])
        queries = np.concatenate([txt_emb, self.tokens(word_ids)[0]])
      maps, scores = self._occlusion(image, queries)
      return Explanation(text=text, score=float(scores[0]), query=maps[0], levels={},
                         words=[(w, maps[1 + k]) for k, (w, _) in enumerate(spans)])
    img_emb, levels = self.regions(image[None])
    size = image.shape[:2]
    level_maps = {name: upsample(similarity_maps(r, txt_emb[:, None])[0, 0], size)
                  for name, r in levels}
    word_maps = []
    if spans:
      vectors = word_vectors(tok[0], spans)[None]
      per_level = [upsample(similarity_maps(r, vectors)[0], size) for _, r in levels]
      word_maps = [(w, np.mean([m[k] for m in per_level], 0).astype(np.float32))
                   for k, (w, _) in enumerate(spans)]
    return Explanation(text=text, score=float(np.sum(unit(img_emb[0]) * unit(txt_emb[0]))),
                       query=np.mean(list(level_maps.values()), 0).astype(np.float32),
                       levels=level_maps, words=word_maps)
