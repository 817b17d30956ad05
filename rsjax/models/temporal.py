"""The change encoder: image sequences (a before/after pair, or N dates) -> one change embedding.

The single-image ViT (+ pyramid) trunk of rsjax/models/vit.py runs on every date with shared
weights. `fusion` then picks how the dates meet:

- "tokens" (the change encoder): the trunk's patch tokens of every date plus the difference tokens
  of consecutive dates (x_t - x_{t-1}), each set tagged with its own learned date embedding and
  the trunk's spatial position, go through `depth` transformer blocks of joint attention, so every
  token attends across dates; the mean of the fused difference tokens (with model.image.pool
  "gap"; else a learned change token) is pooled into the embedding. Date embeddings and signed
  differences make the order count (A->B is not B->A), and the same parameters serve any number
  of dates up to `max_dates`.
- "late_fusion" (a baseline): the difference of the last and first dates' global embeddings.
- "second_image" (a baseline): the last date's global embedding alone.

Every variant also returns a change logit (a jointly trained change / no-change head, on the
pooled change vector or on the pixels: rsjax/models/change_detector.py), so that "no change" is an
answer of its own and not only a caption to retrieve. Parameters of the trunk,
text tower and heads keep TwoTower's names: a single-image checkpoint initialises them
(init.checkpoint), and the fusion starts fresh.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from rsjax.errors import ConfigError
from rsjax.models.change_detector import PixelChangeDetector, check_detector
from rsjax.models.heads import ProjectionHead, l2_normalize, pack_codes
from rsjax.models.layers import Encoder, LayerNorm, logical
from rsjax.models.two_tower import TwoTower

FUSIONS = ("tokens", "late_fusion", "second_image")


def default_temporal_config() -> ml_collections.ConfigDict:
  """The `model.temporal` section: its presence makes the model a change encoder."""
  return ml_collections.ConfigDict(dict(
      fusion="tokens",   # tokens | late_fusion | second_image (see rsjax/models/temporal.py)
      dates=2,           # dates per input sequence (the data's sequence length)
      max_dates=4,       # date embeddings held: sequences of 2..max_dates dates
      depth=2,           # fusion blocks (fusion="tokens")
      heads=4,
      detector="pooled",  # the change / no-change head: pooled | pixels (models/change_detector.py)
  ))


def is_temporal(model_config: ml_collections.ConfigDict) -> bool:
  return "temporal" in model_config


class TokenFusion(nn.Module):
  """Date tokens [B, T, N, D] -> pooled change vector [B, D] (fusion="tokens"). pool: "token"
  (the learned change token) or "gap" (the mean of the fused difference tokens of the last two
  dates), as the trunk pools (model.image.pool "cls" / "gap")."""
  depth: int
  heads: int
  max_dates: int
  pool: str = "token"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, regions: bool = False):
    """regions: also the fused difference tokens of the last two dates [B, N, D], through the
    same ln_post as the pooled vector (where the change is, for heat maps)."""
    batch, dates, n, width = tokens.shape
    if dates > self.max_dates:
      raise ConfigError(f"config key 'model.temporal.max_dates': {self.max_dates}, but the input "
                        f"has {dates} dates")
    init = logical(nn.initializers.normal(0.02), (None, "embed"))
    date_embed = self.param("date_embed", init, (self.max_dates, width))
    diff_embed = self.param("diff_embed", init, (self.max_dates - 1, width))
    tokens = tokens.astype(self.dtype)
    diffs = tokens[:, 1:] - tokens[:, :-1]                          # [B, T-1, N, D]
    parts = [tokens + date_embed[:dates, None].astype(self.dtype),
             diffs + diff_embed[:dates - 1, None].astype(self.dtype)]
    seq = jnp.concatenate(parts, 1).reshape(batch, (2 * dates - 1) * n, width)
    change = self.param("change_token", logical(nn.initializers.normal(0.02), ("embed",)),
                        (width,))
    seq = jnp.concatenate([jnp.broadcast_to(change.astype(self.dtype), (batch, 1, width)), seq], 1)
    seq = LayerNorm(dtype=self.dtype, name="ln_pre")(seq)
    seq, _ = Encoder(self.depth, self.heads, dtype=self.dtype, name="encoder")(seq)
    ln_post = LayerNorm(dtype=self.dtype, name="ln_post")
    last_diffs = seq[:, 1 + (2 * dates - 2) * n:]                  # [B, N, D]
    pooled = ln_post(jnp.mean(last_diffs, 1) if self.pool == "gap" else seq[:, 0])
    if not regions:
      return pooled
    return pooled, ln_post(last_diffs)


class ChangeTwoTower(TwoTower):
  """encode_image: dates [B, T, H, W, 3] -> change embedding [B, E] unit norm (the name stays
  TwoTower's, so evaluation, hashing and indexing treat a sequence like an image); encode_text as
  TwoTower. `__call__` adds "change_logit" [B] (> 0: changed) to TwoTower's outputs."""

  def setup(self):
    super().setup()
    t = self.config.temporal
    if t.fusion not in FUSIONS:
      raise ConfigError(f"config key 'model.temporal.fusion': unknown {t.fusion!r}, choose from "
                        f"{FUSIONS}")
    if t.fusion == "tokens":
      self.fusion = TokenFusion(t.depth, t.heads, t.max_dates,
                                pool="gap" if self.config.image.pool == "gap" else "token",
                                name="fusion")
      self.change_proj = ProjectionHead(self.config.embed_dim, self.config.projection)
    elif t.fusion == "late_fusion":
      self.change_proj = ProjectionHead(self.config.embed_dim, "mlp")
    detector = t.get("detector", "pooled")
    check_detector(detector)
    if detector == "pixels":
      self.change_head = PixelChangeDetector()
    else:
      self.change_head = nn.Dense(1, kernel_init=logical(nn.initializers.zeros, ("embed", None)))

  def _dates(self, images: jax.Array) -> dict:
    """[B, T, H, W, 3] -> {"embedding": [B, E] (not normalised), "change_logit": [B]}."""
    if images.ndim != 5:
      raise ConfigError(f"config key 'model.temporal': a change encoder takes date sequences "
                        f"[B, T, H, W, 3], got images of shape {images.shape}; use a change set "
                        "(data.name='rs_synth_change' or 'levir_cc_change')")
    batch, dates = images.shape[:2]
    out = self.image(images.reshape(batch * dates, *images.shape[2:]))
    fusion = self.config.temporal.fusion
    emb = out["embedding"].reshape(batch, dates, -1)
    if fusion == "tokens":
      tokens = out["tokens"].reshape(batch, dates, *out["tokens"].shape[1:])
      feature = self.fusion(tokens)
      embedding = self.change_proj(feature)
    elif fusion == "late_fusion":
      feature = emb[:, -1] - emb[:, 0]
      embedding = self.change_proj(feature)
    else:
      feature = embedding = emb[:, -1]
    if self.config.temporal.get("detector", "pooled") == "pixels":
      logit = self.change_head(images)
    else:
      logit = self.change_head(feature.astype(jnp.float32))[:, 0]
    return {"embedding": embedding, "change_logit": logit}

  def image_regions(self, images: jax.Array) -> dict:
    """Date sequences [B, T, H, W, 3] -> {"embedding" [B, E], "patches" [B, gh, gw, E]}, not
    normalised: the change embedding and, per trunk position, the fused difference token of the
    last two dates through the same projection ("where the change matched"; fusion="tokens")."""
    if self.config.temporal.fusion != "tokens":
      raise ConfigError("config key 'model.temporal.fusion': heat maps need the token fusion "
                        f"('tokens'), not {self.config.temporal.fusion!r}")
    batch, dates = images.shape[:2]
    out = self.image(images.reshape(batch * dates, *images.shape[2:]))
    gh, gw = out["grid"]
    tokens = out["tokens"].reshape(batch, dates, *out["tokens"].shape[1:])
    pooled, diffs = self.fusion(tokens, regions=True)
    return {"embedding": self.change_proj(pooled),
            "patches": self.change_proj(diffs).reshape(batch, gh, gw, -1)}

  def image_embedding(self, images: jax.Array) -> jax.Array:
    """[B, T, H, W, 3] -> the change embedding [B, E], not normalised."""
    return self._dates(images)["embedding"]

  def encode_image(self, images: jax.Array) -> jax.Array:
    return l2_normalize(self._dates(images)["embedding"])

  def change_logit(self, images: jax.Array) -> jax.Array:
    """[B, T, H, W, 3] -> [B] float32; sigmoid > 0.5 reads as "changed"."""
    return self._dates(images)["change_logit"]

  def hash_image(self, images: jax.Array) -> jax.Array:
    return pack_codes(self.image_hash(self._dates(images)["embedding"], train=False))

  def __call__(self, images: jax.Array, ids: jax.Array, hash_beta: jax.Array | float = 1.0) -> dict:
    pair = self._dates(images)
    txt = self.text(ids)["embedding"]
    img_n, txt_n, scale, bias = self.head(pair["embedding"], txt)
    out = {"image": img_n, "text": txt_n, "logit_scale": scale, "logit_bias": bias,
           "change_logit": pair["change_logit"]}
    if self.config.hashing.bits:
      out["image_hash"] = self.image_hash(pair["embedding"], hash_beta)
      out["text_hash"] = self.text_hash(txt, hash_beta)
    return out
