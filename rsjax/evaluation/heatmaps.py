"""Word–region heat maps: where in an image a query, or each of its words, matches.

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
  """One (image, text) pair. Maps are [H, W] float32 cosines on the image's pixels."""
  text: str
  score: float                           # cosine of the pooled embeddings (the retrieval score)
  query: np.ndarray                      # [H, W] the whole query
  levels: dict[str, np.ndarray]          # "patches (stride 16)", "pyramid stride 4", ...: [H, W]
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


class MapMaker:
  """Heat maps for one model: region and token vectors encoded on the mesh in padded batches
  (multi-process safe, as the evaluation's encoders are), the cosines on the host."""

  def __init__(self, model, params, mesh, batch_size: int = 32):
    self.model, self.params, self.mesh, self.batch_size = model, params, mesh, batch_size

  @functools.cached_property
  def _fns(self):
    return _region_fn(self.model), _token_fn(self.model)

  def _encode(self, fn, inputs: np.ndarray) -> np.ndarray:
    from rsjax.evaluation.encode import encode_in_batches
    with jax.set_mesh(self.mesh):
      return encode_in_batches(fn, self.params, inputs, min(self.batch_size, len(inputs)),
                               self.mesh)

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

  def query_maps(self, images: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of uint8 images [N, H, W, 3] and ids [N, L] -> (whole-query maps [N, H, W] float32,
    scores [N]: cosines of the pooled embeddings)."""
    img_emb, levels = self.regions(images)
    txt_emb, _ = self.tokens(ids)
    size = images.shape[1:3]
    maps = [upsample(similarity_maps(r, txt_emb[:, None])[:, 0], size) for _, r in levels]
    scores = np.sum(unit(img_emb) * unit(txt_emb), -1)
    return np.mean(maps, 0).astype(np.float32), scores.astype(np.float32)

  def explain(self, image: np.ndarray, text: str, ids: np.ndarray, tokenizer=None) -> Explanation:
    """One uint8 image [H, W, 3] and its query's ids [L] -> its Explanation; a `tokenizer` (with
    `words(ids)`) adds one map per word of the query."""
    img_emb, levels = self.regions(image[None])
    txt_emb, tok = self.tokens(ids[None])
    size = image.shape[:2]
    level_maps = {name: upsample(similarity_maps(r, txt_emb[:, None])[0, 0], size)
                  for name, r in levels}
    word_maps = []
    if tokenizer is not None:
      spans = tokenizer.words(ids)
      if spans:
        vectors = word_vectors(tok[0], spans)[None]
        per_level = [upsample(similarity_maps(r, vectors)[0], size) for _, r in levels]
        word_maps = [(w, np.mean([m[k] for m in per_level], 0).astype(np.float32))
                     for k, (w, _) in enumerate(spans)]
    return Explanation(text=text, score=float(np.sum(unit(img_emb[0]) * unit(txt_emb[0]))),
                       query=np.mean(list(level_maps.values()), 0).astype(np.float32),
                       levels=level_maps, words=word_maps)

