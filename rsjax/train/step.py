"""The pure train step: (state, batch) -> (state, metrics), and its jit over the mesh.

Contrastive loss (CLIP / SigLIP / triplet; ring-sharded over data-parallel devices), optional
hashing loss on nested code prefixes, optional gradient accumulation over micro-batches.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import PartitionSpec as P

from rsjax import parallel, trainable
from rsjax.losses import contrastive_loss, distillation_loss, hashing_loss
from rsjax.models.heads import hash_beta
from rsjax.models.two_tower import TwoTower
from rsjax.pixels import normalize_images
from rsjax.state import TrainState
from rsjax.errors import ConfigError


def grad_accum_steps(config: ml_collections.ConfigDict) -> int:
  """train.grad_accum_steps (1 for configs written before the key existed)."""
  k = config.train.get("grad_accum_steps", 1)
  if not isinstance(k, int) or k < 1:
    raise ConfigError(f"config key 'train.grad_accum_steps' must be an integer >= 1, got {k!r}")
  return k


def split_micro_batches(x: jax.Array, k: int, mesh=None) -> jax.Array:
  """[B, ...] -> [k, B/k, ...]: micro-batch j holds rows j, j + k, j + 2k, ...

  Interleaving keeps every row on the device that already holds it: a device's B/N consecutive
  rows split into k groups of B/(N k) (parallel.check_batch requires that divisibility), so the
  micro-batches are sharded over the data-parallel axes like the batch, with no communication.
  """
  b = x.shape[0]
  micro = jnp.swapaxes(x.reshape(b // k, k, *x.shape[1:]), 0, 1)
  if mesh is not None:
    micro = jax.lax.with_sharding_constraint(
        micro, jax.sharding.NamedSharding(mesh, P(None, parallel.BATCH_AXES)))
  return micro


POSITIVES = ("pair", "label", "caption")


def positives_kind(t: ml_collections.ConfigDict, key: str = "positives") -> str:
  """train.positives: "pair" (only image i matches caption i), "label" (images of the same class
  match too) or "caption" (rows whose captions are the same text match too: change pairs share
  "no change"-like captions that must not be pushed apart as negatives). train.hash_positives:
  the same choices for the hashing loss; empty (its default) follows train.positives, so that a
  run can change the contrastive positives while the codes keep learning classes."""
  kind = t.get(key, "pair" if key == "positives" else "")
  if key == "hash_positives" and kind == "":
    return positives_kind(t)
  if kind not in POSITIVES:
    empty = ", or empty to follow train.positives" if key == "hash_positives" else ""
    raise ConfigError(f"config key 'train.{key}': unknown {kind!r} (use "
                      f"{', '.join(POSITIVES)}{empty})")
  return kind


def label_key(config: ml_collections.ConfigDict) -> str | None:
  """The config key that makes training read each image's class, or None when none does."""
  if positives_kind(config.train) == "label":
    return "train.positives"
  if config.model.hashing.bits and positives_kind(config.train, "hash_positives") == "label":
    return "train.hash_positives"
  return None


def caption_fingerprints(tokens: jax.Array) -> jax.Array:
  """[B, L] token ids -> [B, 2] uint32: two polynomial hashes of each row. Rows of the same
  caption text have equal fingerprints; unequal rows collide with probability ~B^2 / 2^64, and
  comparing fingerprints costs [B, B], not the [B, B, L] of comparing rows."""
  powers = jnp.stack([jnp.full(tokens.shape[1], base, jnp.uint32) ** jnp.arange(
      tokens.shape[1], dtype=jnp.uint32) for base in (1000003, 2654435761)], 1)  # [L, 2]
  # An elementwise product and sum (wrapping mod 2^32), not a dot: integer dots are not on
  # every accelerator.
  return jnp.sum((tokens.astype(jnp.uint32) + 1)[:, :, None] * powers[None], axis=1,
                 dtype=jnp.uint32)


def positives_matrix(kind: str, batch: dict) -> jax.Array | None:
  """[B, B] bool of the matching (image, caption) rows of `batch`, or None for "pair" (the
  diagonal only)."""
  if kind == "label":
    return batch["label"][:, None] == batch["label"][None, :]
  if kind == "caption":
    f = caption_fingerprints(batch["tokens"])
    return jnp.all(f[:, None, :] == f[None, :, :], axis=-1)
  return None


def teacher_images(images: jax.Array, size: int) -> jax.Array:
  """Normalised images [B, H, W, 3] resized (bilinear) to a teacher's input size."""
  if images.shape[1:3] == (size, size):
    return images
  return jax.image.resize(images, (images.shape[0], size, size, images.shape[3]), "bilinear")


def make_train_step(model: TwoTower, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict, mesh=None,
                    teacher: tuple[TwoTower, int] | None = None) -> Callable:
  """The pure update: (state, batch{'image' uint8 [B,H,W,3], 'tokens' [B,L]}, constants) ->
  (state, metrics).

  `constants` (not differentiated, not updated): {"frozen": the parameters train.frozen keeps
  fixed (state.params holds the others), "teacher": the distillation teacher's parameters}, either
  absent. `teacher`: (teacher model, its image size) when distill.teacher is set; the loss then
  adds distill.weight times the KL between the teacher's and the student's image-text softmax
  distributions (rsjax.losses.distillation_loss).

  With a mesh of several data-parallel devices, train.loss_sharding picks how the contrastive loss
  is spread: "ring" (exact ring over the devices; no device holds the global [B, B] logits), "auto"
  (left to XLA's partitioner) or "all_gather" (every device computes all logits: the naive baseline).

  train.grad_accum_steps = k > 1 splits the batch into k micro-batches of B/k (see
  split_micro_batches), runs forward and backward on each in turn (a lax.scan, so only one
  micro-batch's activations are alive) and applies the mean gradient once. The contrastive
  negatives of each pair then come from its own micro-batch only: the loss is the mean of k losses
  over B/k pairs, not one loss over B pairs (to keep all B negatives, shard the batch over more
  devices or use remat instead). Call the jitted step under `jax.set_mesh(mesh)`: the activation
  constraints of the model take the mesh from there.
  """
  t, hashing = config.train, config.model.hashing
  rules = parallel.rules_for(config)
  accum = grad_accum_steps(config)
  multi = mesh is not None and parallel.data_parallel_size(mesh) > 1
  if t.loss_sharding not in ("ring", "auto", "all_gather"):
    raise ConfigError(f"config key 'train.loss_sharding': unknown '{t.loss_sharding}' "
                     "(use ring, auto or all_gather)")
  ring_mesh = mesh if (multi and t.loss_sharding == "ring") else None
  gather = multi and t.loss_sharding == "all_gather"
  kind, hash_kind = positives_kind(t), positives_kind(t, "hash_positives")
  if kind != "pair" and (ring_mesh is not None or gather):
    raise ConfigError(f"config key 'train.positives': '{kind}' needs train.loss_sharding='auto' "
                      "on a mesh of several data-parallel devices")
  prefix_bits = tuple(t.get("hash_prefix_bits", ()))
  if any(not 0 < b < hashing.bits for b in prefix_bits):
    raise ConfigError(f"config key 'train.hash_prefix_bits': {prefix_bits} must lie strictly "
                     f"between 0 and model.hashing.bits={hashing.bits}")

  distill_weight = float(config.distill.weight) if teacher is not None else 0.0

  def loss_fn(params, batch, beta, constants):
    images = normalize_images(batch["image"])
    out = model.apply({"params": trainable.join(params, constants.get("frozen", {}))}, images,
                      batch["tokens"], hash_beta=beta)
    if gather:  # the naive baseline: every device gathers all embeddings, builds all logits
      keys = ("image", "text", "logit_scale", "logit_bias")
      whole = jax.shard_map(
          lambda o: contrastive_loss(t.loss, o, margin=t.triplet_margin), mesh=mesh,
          in_specs=({k: P() for k in keys},), out_specs=P())
      loss = whole({k: out[k] for k in keys})
    else:
      positives = positives_matrix(kind, batch)  # None: image i matches caption i only
      loss = contrastive_loss(t.loss, out, mesh=ring_mesh, margin=t.triplet_margin,
                              positives=positives)
    terms = {"contrastive_loss": loss}
    if "change_logit" in out:  # a change encoder: "no change" is an answer of its own
      if "changed" not in batch:
        raise ConfigError("config key 'model.temporal': a change encoder trains its change / "
                          "no-change head, but the batches have no 'changed' flags (the data "
                          "set must be a change set: data.name='rs_synth_change' or "
                          "'levir_cc_change')")
      terms["change_loss"] = optax.sigmoid_binary_cross_entropy(
          out["change_logit"].astype(jnp.float32), batch["changed"].astype(jnp.float32)).mean()
      loss = loss + float(t.change_weight) * terms["change_loss"]
    if hashing.bits:
      # Relevance by pairing (image i and caption j are similar only when i == j), by class or
      # by caption text.
      same = positives_matrix(hash_kind, batch)
      similarity = (jnp.eye(out["image_hash"].shape[0], dtype=jnp.float32) if same is None
                    else same.astype(jnp.float32))
      # Nested codes: the same loss on the leading bits, so that a prefix of the K-bit code is a
      # usable shorter code (one head serves 16/32/64-bit archives). Mean over the code lengths.
      hash_total = jnp.zeros((), jnp.float32)
      for bits in prefix_bits + (hashing.bits,):
        part, hash_terms = hashing_loss(
            out["image_hash"][:, :bits], out["text_hash"][:, :bits], t.hash_weights,
            similarity=similarity, temperature=t.hash_temperature)
        hash_total = hash_total + part / (len(prefix_bits) + 1)
      loss = loss + hash_total
      terms.update({f"hash_{k}": v for k, v in hash_terms.items()})
    if teacher is not None:
      teacher_model, teacher_size = teacher
      taught = teacher_model.apply({"params": constants["teacher"]},
                                   teacher_images(images, teacher_size), batch["tokens"])
      terms["distill_loss"] = distillation_loss(out, taught)
      loss = loss + distill_weight * terms["distill_loss"]
    return loss, {"logit_scale": out["logit_scale"], **terms}

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def accumulated(params, batch, beta, constants):
    """Mean loss, metrics and gradients over `accum` micro-batches, summed in float32."""
    micro = {k: split_micro_batches(v, accum, mesh) for k, v in batch.items()}

    def one(carry, mb):
      (loss, aux), grads = grad_fn(params, mb, beta, constants)
      total = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), carry, grads)
      return total, (loss, aux)

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    total, (losses, aux) = jax.lax.scan(one, zeros, micro)
    grads = jax.tree.map(lambda g, p: (g / accum).astype(p.dtype), total, params)
    return (losses.mean(), jax.tree.map(lambda v: v.mean(0), aux)), grads

  def train_step(state: TrainState, batch: dict, constants: dict | None = None):
    constants = constants or {}
    beta = hash_beta(state.step, t.steps, hashing.beta_start, hashing.beta_end)
    with nn.logical_axis_rules(rules):  # the model's activation constraints use these names
      if accum == 1:
        (loss, aux), grads = grad_fn(state.params, batch, beta, constants)
      else:
        (loss, aux), grads = accumulated(state.params, batch, beta, constants)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def compile_train_step(train_step, state_shardings, mesh, constants_shardings=None):
  """jit with the state in its sharded layout, the batch split over the data-parallel axes, the
  metrics replicated and the old state's buffers donated. Call it under `jax.set_mesh(mesh)`.
  `constants_shardings`: the layout of the step's constants (frozen and teacher parameters), which
  it then takes as a third argument; they are neither donated nor returned."""
  batch_sharding = parallel.batch_sharding(mesh)  # every batch entry ('image', 'tokens', 'label')
  shardings = (state_shardings, batch_sharding)
  if constants_shardings is not None:
    shardings += (constants_shardings,)
  return jax.jit(train_step, in_shardings=shardings,
                 out_shardings=(state_shardings, parallel.replicated(mesh)), donate_argnums=(0,))
