"""Every training loss in one file.

Conventions: `image` and `text` are unit-norm embeddings [B, E] and row i of each is a matching
pair; `logit_scale` is the already-exponentiated temperature (a scalar), `logit_bias` a scalar.
Hashing losses take relaxed codes h = tanh(beta * z) in (-1, 1), [B, K] for K bits; the binary codes
are sign(h).

Sections:
  1. contrastive losses on one device (CLIP softmax, SigLIP sigmoid, VSE++ triplet);
  2. hashing losses (DPSH likelihood, quantization, bit balance and decorrelation, DUCH-style
     contrastive);
  3. exact contrastive losses for a batch sharded over devices (a `ppermute` ring, no [B, B]);
  4. the registry `LOSSES` and the dispatchers `contrastive_loss` and `hashing_loss`;
  5. distillation from a teacher's image-text similarities.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from rsjax.parallel import BATCH_AXES
from rsjax.errors import ConfigError

# --------------------------------------------------------------------------------------------------
# 1. Contrastive losses (one device, or whatever XLA makes of them under jit)
# --------------------------------------------------------------------------------------------------


def clip_softmax_loss(image: jax.Array, text: jax.Array, logit_scale: jax.Array,
                      positives: jax.Array | None = None) -> jax.Array:
  """Symmetric InfoNCE (CLIP, Radford et al. 2021).

  image, text: [B, E]; logit_scale: scalar. Returns a scalar:
    logits = s * image @ text.T                                   [B, B]
    loss = 1/2 (mean_i CE(logits[i, :], i) + mean_j CE(logits[:, j], j))
  positives: optional [B, B] bool (True on the diagonal at least), e.g. pairs of the same class.
  Each row's target is then spread evenly over its positives (multi-positive InfoNCE, as in
  UniCL / SupCon), so same-class captions are not pushed apart as negatives.
  """
  logits = logit_scale * (image @ text.T)  # [B, B]
  if positives is not None:
    pos = positives.astype(logits.dtype)
    i2t = optax.softmax_cross_entropy(logits, pos / pos.sum(1, keepdims=True))
    t2i = optax.softmax_cross_entropy(logits.T, pos.T / pos.sum(0)[:, None])
    return 0.5 * (i2t.mean() + t2i.mean())
  labels = jnp.arange(logits.shape[0])
  i2t = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  t2i = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
  return 0.5 * (i2t.mean() + t2i.mean())


def siglip_loss(image: jax.Array, text: jax.Array, logit_scale: jax.Array,
                logit_bias: jax.Array, positives: jax.Array | None = None) -> jax.Array:
  """Pairwise sigmoid loss (SigLIP, Zhai et al. 2023, Algorithm 1).

  image, text: [B, E]; logit_scale, logit_bias: scalars. Returns a scalar:
    logits = s * image @ text.T + b                               [B, B]
    z_ij = +1 if i == j else -1
    loss = -sum_ij log_sigmoid(z_ij * logits_ij) / B
  Every pair is an independent binary problem, so no normalisation over the batch is needed;
  dividing by B (not B^2) follows the paper. positives: optional [B, B] bool; z_ij = +1 there.
  """
  logits = logit_scale * (image @ text.T) + logit_bias  # [B, B]
  same = jnp.eye(logits.shape[0], dtype=bool) if positives is None else positives
  labels = 2.0 * same.astype(logits.dtype) - 1.0
  return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / logits.shape[0]


def triplet_loss(image: jax.Array, text: jax.Array, margin: float = 0.2,
                 variant: str = "hardest") -> jax.Array:
  """Bidirectional hinge triplet loss on cosine similarities (VSE++, Faghri et al. 2018).

  image, text: [B, E] (unit norm, so S = image @ text.T are cosines). Returns a scalar:
    S = image @ text.T                                            [B, B]
    cost_i2t[i, j] = max(0, margin - S[i, i] + S[i, j])  j != i   (image anchor i, negative text j)
    cost_t2i[i, j] = max(0, margin - S[j, j] + S[i, j])  i != j   (text anchor j, negative image i)
    "sum":     loss = mean_i sum_j cost_i2t[i, j] + mean_j sum_i cost_t2i[i, j]
    "hardest": loss = mean_i max_j cost_i2t[i, j] + mean_j max_i cost_t2i[i, j]
  The logit scale plays no part: the margin lives in cosine units.
  """
  if variant not in ("hardest", "sum"):
    raise ValueError(f"triplet variant must be 'hardest' or 'sum', got '{variant}'")
  scores = image @ text.T  # [B, B]
  positive = jnp.diagonal(scores)  # [B]
  off_diagonal = 1.0 - jnp.eye(scores.shape[0], dtype=scores.dtype)
  # the positive pair itself would cost exactly `margin`; mask it out
  cost_i2t = jax.nn.relu(margin - positive[:, None] + scores) * off_diagonal
  cost_t2i = jax.nn.relu(margin - positive[None, :] + scores) * off_diagonal
  if variant == "hardest":
    return cost_i2t.max(axis=1).mean() + cost_t2i.max(axis=0).mean()
  return cost_i2t.sum(axis=1).mean() + cost_t2i.sum(axis=0).mean()


def triplet_hardest_loss(image: jax.Array, text: jax.Array, margin: float = 0.2) -> jax.Array:
  """VSE++ max-of-hinges: only the hardest negative in each direction counts. [B, E] -> scalar."""
  return triplet_loss(image, text, margin, "hardest")


def triplet_sum_loss(image: jax.Array, text: jax.Array, margin: float = 0.2) -> jax.Array:
  """VSE0 sum-of-hinges: every violating negative counts. [B, E] -> scalar."""
  return triplet_loss(image, text, margin, "sum")


# --------------------------------------------------------------------------------------------------
# 2. Hashing losses
# --------------------------------------------------------------------------------------------------


def relax_codes(z: jax.Array, beta: float | jax.Array = 1.0) -> jax.Array:
  """[B, K] real outputs -> relaxed codes h = tanh(beta * z) in (-1, 1); beta is annealed up."""
  return jnp.tanh(beta * z)


def binary_codes(h: jax.Array) -> jax.Array:
  """[B, K] -> codes in {-1, +1}. sign(h) with sign(0) := +1, so every bit is set."""
  return jnp.where(h >= 0, 1.0, -1.0).astype(h.dtype)


def similarity_from_labels(labels_a: jax.Array, labels_b: jax.Array) -> jax.Array:
  """Pairwise similarity S in {0, 1}, [Ba, Bb].

  labels [B] (integer class ids): S_ij = [a_i == b_j]. labels [B, C] (multi-hot):
  S_ij = [a_i . b_j > 0], i.e. similar when the two items share at least one label (the usual
  multi-label hashing convention).
  """
  if labels_a.ndim == 1:
    return (labels_a[:, None] == labels_b[None, :]).astype(jnp.float32)
  return ((labels_a.astype(jnp.float32) @ labels_b.astype(jnp.float32).T) > 0).astype(jnp.float32)


def dpsh_similarity_loss(h_a: jax.Array, h_b: jax.Array, similarity: jax.Array) -> jax.Array:
  """Pairwise-similarity likelihood on relaxed codes (DPSH, Li et al. 2016; DCMH, Jiang & Li 2017).

  h_a: [Ba, K], h_b: [Bb, K], similarity S: [Ba, Bb] in {0, 1}. Returns a scalar:
    theta_ij = 1/2 <h_a_i, h_b_j>
    p(S_ij = 1) = sigmoid(theta_ij)
    loss = mean_ij( log(1 + exp(theta_ij)) - S_ij * theta_ij )      (negative log-likelihood)
  log(1 + exp(.)) is computed as softplus, which does not overflow for large theta (long codes).
  Pass the same codes twice for an intra-modal term, image and text codes for the cross-modal one.
  """
  theta = 0.5 * (h_a @ h_b.T)  # [Ba, Bb]
  return jnp.mean(jax.nn.softplus(theta) - similarity * theta)


def quantization_loss(h: jax.Array) -> jax.Array:
  """Distance of relaxed codes to their binary codes (DPSH, DUCH).

  h: [B, K]. Returns mean_i ||sign(h_i) - h_i||^2 (sum over bits, mean over the batch). The binary
  codes are constants (stop-gradient): the loss pulls h towards them, not the other way round.
  """
  b = jax.lax.stop_gradient(binary_codes(h))
  return jnp.mean(jnp.sum((b - h) ** 2, axis=-1))


def bit_balance_loss(h: jax.Array) -> jax.Array:
  """Each bit should be +1 for half the items (DUCH; cf. DPSH's balance term).

  h: [B, K]. Returns mean_k (mean_i h_ik)^2: zero when every bit averages to 0 over the batch, which
  keeps bits informative (a bit that is always +1 carries no information).
  """
  return jnp.mean(jnp.mean(h, axis=0) ** 2)


def bit_decorrelation_loss(h: jax.Array) -> jax.Array:
  """Bits should not repeat each other: the off-diagonal of the bits' second moments, squared.

  h: [B, K]. Returns sum_{k != l} (mean_i h_ik h_il)^2 / (K (K - 1)): zero when every pair of bits
  is uncorrelated over the batch (with balanced bits, mean_i h_ik h_il is their covariance). A
  redundant bit adds nothing to a Hamming distance, which short codes cannot afford; on a nested
  prefix (train.hash_prefix_bits) the term decorrelates the leading bits among themselves.
  """
  k = h.shape[-1]
  gram = (h.T @ h) / h.shape[0]  # [K, K]
  off = gram * (1.0 - jnp.eye(k, dtype=gram.dtype))
  return jnp.sum(off ** 2) / max(k * (k - 1), 1)


def nt_xent_loss(a: jax.Array, b: jax.Array, temperature: float = 0.3) -> jax.Array:
  """Normalised-temperature cross entropy (NT-Xent, SimCLR: Chen et al. 2020) between two views.

  a, b: [B, D] (normalised here). Returns a scalar. On the 2B items u = [a; b]:
    sim = normalize(u) @ normalize(u).T / temperature               [2B, 2B], diagonal excluded
    loss = mean_k CE(sim[k, :], partner(k)),  partner(i) = i + B, partner(i + B) = i
  Unlike CLIP, the other items of the anchor's own view are negatives too.
  """
  u = jnp.concatenate([a, b], axis=0)
  u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
  n = a.shape[0]
  sim = (u @ u.T) / temperature  # [2B, 2B]
  sim = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, sim)  # an item is not its own negative
  partner = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(sim, partner))


def duch_contrastive_loss(h_image: jax.Array, h_text: jax.Array, temperature: float = 0.3,
                          h_image_aug: jax.Array | None = None,
                          h_text_aug: jax.Array | None = None) -> jax.Array:
  """Unsupervised contrastive hashing in the spirit of DUCH (Mikriukov et al. 2022).

  h_image, h_text: relaxed codes [B, K] of matching pairs. Returns a scalar:
    loss = NT-Xent(h_image, h_text)                        cross-modal (inter-modal) term
         + NT-Xent(h_image, h_image_aug)                   intra-modal terms, only when the codes of
         + NT-Xent(h_text, h_text_aug)                     a second augmented view are given
  Contrasting the codes themselves (not the float embeddings) makes the binary space discriminative
  without labels; add quantization_loss and bit_balance_loss to keep the codes near {-1, +1}.
  """
  loss = nt_xent_loss(h_image, h_text, temperature)
  if h_image_aug is not None:
    loss = loss + nt_xent_loss(h_image, h_image_aug, temperature)
  if h_text_aug is not None:
    loss = loss + nt_xent_loss(h_text, h_text_aug, temperature)
  return loss


# --------------------------------------------------------------------------------------------------
# 3. Exact contrastive losses for a batch sharded over devices
#
# The global batch B is split over the N devices of the `axes` of the mesh (b = B / N rows each).
# Instead of all-gathering the other modality (a [b, B] or [B, B] logit matrix per device), the text
# chunks travel around a ring with `ppermute`: at step t, device k holds the texts of device k - t
# and computes one [b, b] logit block. Running log-sum-exps (merged with logaddexp: stable) give
# the softmax denominators exactly; SigLIP simply sums its pairwise terms block by block. The block
# computation is rematerialised in the backward pass (jax.checkpoint), so the gradient also stores
# only O(B * E) per device instead of O(b * B) logits. ppermute is linear: autodiff sends the
# cotangents back round the ring the other way.
# --------------------------------------------------------------------------------------------------


def _axes_tuple(axes: str | Sequence[str]) -> tuple[str, ...]:
  return (axes,) if isinstance(axes, str) else tuple(axes)


def _ring_size(mesh, axes: tuple[str, ...]) -> int:
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
      raise ValueError("pass `mesh=` or call inside `jax.set_mesh(mesh)`")
  missing = [a for a in axes if a not in mesh.shape]
  if missing:
    raise ValueError(f"mesh axes {dict(mesh.shape)} lack {missing}")
  return math.prod(mesh.shape[a] for a in axes)


def _ring_shift(x, axes: tuple[str, ...], n: int):
  """Sends each device's `x` to the next device of the ring over `axes` (linear index order)."""
  return jax.lax.ppermute(x, axes, [(i, (i + 1) % n) for i in range(n)])


@jax.checkpoint
def _clip_block(image: jax.Array, text: jax.Array, logit_scale: jax.Array):
  """One [b, b] logit block -> (row logsumexp [b], column logsumexp [b])."""
  logits = logit_scale * (image @ text.T)
  return jax.nn.logsumexp(logits, axis=1), jax.nn.logsumexp(logits, axis=0)


def sharded_clip_loss(image: jax.Array, text: jax.Array, logit_scale: jax.Array, mesh=None,
                      axes: str | Sequence[str] = BATCH_AXES) -> jax.Array:
  """clip_softmax_loss over the global batch, exactly, with [B/N, B/N] logit blocks per device.

  image, text: global [B, E] arrays whose rows are sharded over `axes` of `mesh` (the ambient mesh
  of jax.set_mesh if None); logit_scale: scalar. Returns the replicated scalar loss. Works under jit
  and grad. Each text chunk travels with the running column log-sum-exp of its texts (the
  text->image denominators), so after N - 1 shifts every row and every column has seen all B
  partners.
  """
  axes = _axes_tuple(axes)
  n = _ring_size(mesh, axes)
  global_batch = image.shape[0]

  def local(img, txt, scale):  # img, txt: [b, E] on this device
    row_lse, col_lse = _clip_block(img, txt, scale)  # the diagonal block: our own texts
    positives = scale * jnp.sum(img * txt, axis=-1)  # [b] matching-pair logits, all local

    def step(carry, _):
      row_lse, txt_j, col_lse_j = carry
      txt_j, col_lse_j = _ring_shift((txt_j, col_lse_j), axes, n)
      r, c = _clip_block(img, txt_j, scale)
      return (jnp.logaddexp(row_lse, r), txt_j, jnp.logaddexp(col_lse_j, c)), None

    (row_lse, _, col_lse), _ = jax.lax.scan(step, (row_lse, txt, col_lse), length=n - 1)
    # col_lse now belongs to some other device's texts; only the global sum matters
    partial = jnp.sum(row_lse) + jnp.sum(col_lse) - 2.0 * jnp.sum(positives)
    return jax.lax.psum(partial, axes) / (2.0 * global_batch)

  return jax.shard_map(local, mesh=mesh, in_specs=(P(axes), P(axes), P()), out_specs=P())(
      image, text, logit_scale)


@functools.partial(jax.checkpoint, static_argnums=(4,))
def _siglip_block(image: jax.Array, text: jax.Array, logit_scale: jax.Array,
                  logit_bias: jax.Array, diagonal: bool) -> jax.Array:
  """-sum log_sigmoid(z * logits) over one [b, b] block; positives only on the diagonal block."""
  logits = logit_scale * (image @ text.T) + logit_bias
  if diagonal:
    labels = 2.0 * jnp.eye(logits.shape[0], dtype=logits.dtype) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(labels * logits))
  return -jnp.sum(jax.nn.log_sigmoid(-logits))


def sharded_siglip_loss(image: jax.Array, text: jax.Array, logit_scale: jax.Array,
                        logit_bias: jax.Array, mesh=None,
                        axes: str | Sequence[str] = BATCH_AXES) -> jax.Array:
  """siglip_loss over the global batch, exactly, with [B/N, B/N] logit blocks per device.

  Same layout as sharded_clip_loss. Following the SigLIP paper's chunked implementation, the text
  chunks go round the ring and every device adds the pairwise terms of its images with each chunk.
  """
  axes = _axes_tuple(axes)
  n = _ring_size(mesh, axes)
  global_batch = image.shape[0]

  def local(img, txt, scale, bias):
    total = _siglip_block(img, txt, scale, bias, True)

    def step(carry, _):
      total, txt_j = carry
      txt_j = _ring_shift(txt_j, axes, n)
      return (total + _siglip_block(img, txt_j, scale, bias, False), txt_j), None

    (total, _), _ = jax.lax.scan(step, (total, txt), length=n - 1)
    return jax.lax.psum(total, axes) / global_batch

  return jax.shard_map(local, mesh=mesh, in_specs=(P(axes), P(axes), P(), P()), out_specs=P())(
      image, text, logit_scale, logit_bias)


# --------------------------------------------------------------------------------------------------
# 4. Registry and dispatch
# --------------------------------------------------------------------------------------------------


def _no_ring_positives(positives, mesh) -> None:
  if positives is not None and mesh is not None:
    raise ConfigError("config key 'train.positives': 'label' needs the whole [B, B] logits: set "
                      "train.loss_sharding='auto' (the ring loss takes pairs only)")


def _pairs_only(name: str, positives) -> None:
  if positives is not None:
    raise ConfigError(f"config key 'train.positives': loss '{name}' takes pairs only; "
                      "train.positives='label' works with 'clip' and 'siglip'")


def _clip(out: Mapping, mesh=None, axes=BATCH_AXES, positives=None, **_) -> jax.Array:
  _no_ring_positives(positives, mesh)
  if mesh is not None:
    return sharded_clip_loss(out["image"], out["text"], out["logit_scale"], mesh, axes)
  return clip_softmax_loss(out["image"], out["text"], out["logit_scale"], positives)


def _siglip(out: Mapping, mesh=None, axes=BATCH_AXES, positives=None, **_) -> jax.Array:
  _no_ring_positives(positives, mesh)
  if mesh is not None:
    return sharded_siglip_loss(out["image"], out["text"], out["logit_scale"], out["logit_bias"],
                               mesh, axes)
  return siglip_loss(out["image"], out["text"], out["logit_scale"], out["logit_bias"], positives)


def _triplet_hardest(out: Mapping, margin: float = 0.2, positives=None, **_) -> jax.Array:
  _pairs_only("triplet_hardest", positives)
  return triplet_loss(out["image"], out["text"], margin, "hardest")


def _triplet_sum(out: Mapping, margin: float = 0.2, positives=None, **_) -> jax.Array:
  _pairs_only("triplet_sum", positives)
  return triplet_loss(out["image"], out["text"], margin, "sum")


# name -> fn(outputs, **kw) -> scalar. `outputs` is the dict TwoTower returns.
LOSSES: dict[str, Callable[..., jax.Array]] = {
    "clip": _clip,
    "siglip": _siglip,
    "triplet_hardest": _triplet_hardest,
    "triplet_sum": _triplet_sum,
}


def contrastive_loss(name: str, outputs: Mapping, *, mesh=None, axes=BATCH_AXES,
                     margin: float = 0.2, positives: jax.Array | None = None) -> jax.Array:
  """Dispatches by config name.

  outputs: {"image": [B, E], "text": [B, E], "logit_scale": scalar, "logit_bias": scalar}.
  mesh: when given, "clip" and "siglip" use the exact ring-sharded versions over `axes` (the batch
  must be sharded over them); the triplet losses ignore it. margin: the triplet margin.
  positives: optional [B, B] bool of matching (image, text) pairs beyond the diagonal (clip and
  siglip only, not with the ring).
  """
  if name not in LOSSES:
    raise ConfigError(f"config key 'train.loss': unknown loss '{name}', choose from "
                      f"{sorted(LOSSES)}")
  return LOSSES[name](outputs, mesh=mesh, axes=axes, margin=margin, positives=positives)


HASHING_TERMS = ("contrastive", "similarity", "quantization", "balance", "decorrelation")


def hashing_loss(h_image: jax.Array, h_text: jax.Array, weights: Mapping[str, float], *,
                 similarity: jax.Array | None = None, temperature: float = 0.3,
                 h_image_aug: jax.Array | None = None,
                 h_text_aug: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of hashing terms. Returns (total scalar, {term: unweighted scalar}).

  h_image, h_text: relaxed codes [B, K]. weights: a dict or ConfigDict over HASHING_TERMS (missing
  or zero weights are skipped):
    contrastive   duch_contrastive_loss(h_image, h_text, temperature, h_image_aug, h_text_aug)
    similarity    dpsh_similarity_loss(h_image, h_text, similarity); needs `similarity` [B, B]
                  (e.g. similarity_from_labels(labels, labels))
    quantization  quantization_loss(h_image) + quantization_loss(h_text)
    balance       bit_balance_loss(h_image) + bit_balance_loss(h_text)
    decorrelation bit_decorrelation_loss(h_image) + bit_decorrelation_loss(h_text)
  """
  weights = dict(weights)
  unknown = sorted(set(weights) - set(HASHING_TERMS))
  if unknown:
    raise ConfigError(f"config key 'train.hash_weights': unknown hashing loss terms {unknown}, "
                      f"choose from {list(HASHING_TERMS)}")
  negative = sorted(k for k, v in weights.items() if v < 0)
  if negative:  # a negative balance or decorrelation weight would reward dead, repeated bits
    raise ConfigError(f"config key 'train.hash_weights.{negative[0]}' must be >= 0, got "
                      f"{weights[negative[0]]}")
  terms = {}
  if weights.get("contrastive", 0.0):
    terms["contrastive"] = duch_contrastive_loss(h_image, h_text, temperature, h_image_aug,
                                                 h_text_aug)
  if weights.get("similarity", 0.0):
    if similarity is None:
      raise ValueError("hashing weight 'similarity' is set but no similarity matrix was given")
    terms["similarity"] = dpsh_similarity_loss(h_image, h_text, similarity)
  if weights.get("quantization", 0.0):
    terms["quantization"] = quantization_loss(h_image) + quantization_loss(h_text)
  if weights.get("balance", 0.0):
    terms["balance"] = bit_balance_loss(h_image) + bit_balance_loss(h_text)
  if weights.get("decorrelation", 0.0):
    terms["decorrelation"] = bit_decorrelation_loss(h_image) + bit_decorrelation_loss(h_text)
  total = sum((weights[k] * v for k, v in terms.items()), jnp.zeros((), jnp.float32))
  return total, terms


# --------------------------------------------------------------------------------------------------
# 5. Distillation
# --------------------------------------------------------------------------------------------------


def _kl_rows(teacher_logits: jax.Array, student_logits: jax.Array) -> jax.Array:
  """Mean over rows of KL(softmax(teacher) || softmax(student)), in float32."""
  t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), axis=-1)
  s = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(t) * (t - s), axis=-1))


def distillation_loss(student: Mapping, teacher: Mapping) -> jax.Array:
  """The student's image->text and text->image softmax distributions pulled to the teacher's.

  student, teacher: {"image": [B, E], "text": [B, E] unit norm, "logit_scale": scalar} (the two
  may have different E; each side's logits are its own scale * image @ text.T, [B, B]). Returns
  the mean of the two directions' KL(teacher || student), a scalar. open_clip's distillation loss
  is the cross-entropy against the teacher's softmax, which differs from this KL by the teacher's
  entropy, a constant: the gradients are the same, and a student equal to its teacher scores 0.
  The teacher is not differentiated.
  """
  teacher = jax.tree.map(jax.lax.stop_gradient, dict(teacher))
  s_logits = student["logit_scale"] * student["image"] @ student["text"].T
  t_logits = teacher["logit_scale"] * teacher["image"] @ teacher["text"].T
  return 0.5 * (_kl_rows(t_logits, s_logits) + _kl_rows(t_logits.T, s_logits.T))
