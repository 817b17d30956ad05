"""The optimizer: AdamW with linear warmup and cosine decay, weight decay on matrices only.

Built from the config's `train` section; used by the trainer and by everything that rebuilds a
run's state layout to restore a checkpoint (evaluation, index, export, plan).
"""

from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate_schedule(t: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup to train.learning_rate, then cosine decay to zero at train.steps."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.learning_rate, warmup_steps=t.warmup_steps,
      decay_steps=max(t.steps, t.warmup_steps + 1), end_value=t.learning_rate * t.final_lr_fraction)


NO_DECAY_NAMES = ("bias", "scale", "norm", "logit")


def decays(path, leaf) -> bool:
  """Weight decay for a parameter at `path`: at least 2-D and not named like a bias or scale."""
  names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
  name = str(names[-1]).lower() if names else ""
  return leaf.ndim >= 2 and not any(word in name for word in NO_DECAY_NAMES)


def make_optimizer(t: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW; weight decay only on matrices and embeddings, as CLIP does: not on biases (also the
  [3, heads, head_dim] attention ones), norms, scales or the logit scale/bias."""
  decay_mask = lambda params: jax.tree_util.tree_map_with_path(decays, params)
  chain = []
  if t.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(t.grad_clip_norm))
  chain.append(optax.adamw(learning_rate_schedule(t), b1=t.b1, b2=t.b2, eps=t.eps,
                           weight_decay=t.weight_decay, mask=decay_mask))
  tx = optax.chain(*chain)
  if t.get("nonfinite", "stop") == "skip":
    # Drops an update whose gradients hold a NaN/Inf and leaves the optimizer state as it was; the
    # loop counts these steps and stops after train.max_consecutive_skips in a row (optax would
    # otherwise apply the update after its own limit).
    tx = optax.apply_if_finite(tx, max_consecutive_errors=2**30)
  return tx
