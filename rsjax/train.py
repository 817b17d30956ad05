"""The trainer, read top to bottom: mesh -> input -> model -> shard -> update -> checkpoint -> eval -> loop.

The train step is a pure function `(state, batch) -> (state, metrics)`, jitted with explicit in/out
shardings. Parameters and optimizer state are laid out by the logical-axis rules in
`rsjax.parallel`; the batch is split over the mesh's data-parallel axes.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from rsjax import evaluate, parallel
from rsjax.checkpoint import Checkpointer, abstract_like
from rsjax.data import pipeline
from rsjax.data.datasets import RetrievalData, load_retrieval_data
from rsjax.losses import contrastive_loss, hashing_loss
from rsjax.models.heads import hash_beta
from rsjax.console import log
from rsjax.metric_writer import MetricWriter
from rsjax.models.two_tower import TwoTower


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN/Inf; the message names the step and the last good checkpoint."""


def learning_rate_schedule(t: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup to train.learning_rate, then cosine decay to zero at train.steps."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.learning_rate, warmup_steps=t.warmup_steps,
      decay_steps=max(t.steps, t.warmup_steps + 1), end_value=t.learning_rate * t.final_lr_fraction)


_NO_DECAY_NAMES = ("bias", "scale", "norm", "logit")


def _decays(path, leaf) -> bool:
  """Weight decay for a parameter at `path`: at least 2-D and not named like a bias or scale."""
  names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
  name = str(names[-1]).lower() if names else ""
  return leaf.ndim >= 2 and not any(word in name for word in _NO_DECAY_NAMES)


def make_optimizer(t: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW; weight decay only on matrices and embeddings, as CLIP does: not on biases (also the
  [3, heads, head_dim] attention ones), norms, scales or the logit scale/bias."""
  decay_mask = lambda params: jax.tree_util.tree_map_with_path(_decays, params)
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


def create_model(config: ml_collections.ConfigDict) -> TwoTower:
  return TwoTower(config.model)


def _boxed_state_fn(model: TwoTower, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable:
  """key -> TrainState whose parameter leaves are boxed with their logical axis names."""
  images = jnp.zeros((1, config.data.image_size, config.data.image_size, 3), jnp.float32)
  ids = jnp.ones((1, config.model.text.context_length), jnp.int32)

  def boxed_state(key):
    params = model.init(key, images, ids)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  return boxed_state


def state_layout(model: TwoTower, tx: optax.GradientTransformation,
                 config: ml_collections.ConfigDict, mesh):
  """(abstract state with shardings, state shardings) without allocating anything."""
  boxed_state = _boxed_state_fn(model, tx, config)
  rules = parallel.rules_for(config)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract = jax.eval_shape(boxed_state, jax.random.key(0))
    shardings = parallel.logical_to_sharding(nn.get_partition_spec(abstract), mesh, rules)
  return abstract_like(nn.meta.unbox(abstract), shardings), shardings


def init_state(model: TwoTower, tx: optax.GradientTransformation,
               config: ml_collections.ConfigDict, mesh, rng: jax.Array):
  """Initialises the train state directly in its sharded layout. Returns (state, state_shardings)."""
  boxed_state = _boxed_state_fn(model, tx, config)
  _, shardings = state_layout(model, tx, config, mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(parallel.rules_for(config)):
    state = jax.jit(lambda key: nn.meta.unbox(boxed_state(key)), out_shardings=shardings)(rng)
  return state, shardings


def grad_accum_steps(config: ml_collections.ConfigDict) -> int:
  """train.grad_accum_steps (1 for configs written before the key existed)."""
  k = config.train.get("grad_accum_steps", 1)
  if not isinstance(k, int) or k < 1:
    raise ValueError(f"config key 'train.grad_accum_steps' must be an integer >= 1, got {k!r}")
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


def positives_by_label(t: ml_collections.ConfigDict) -> bool:
  """train.positives: "pair" (only image i matches caption i) or "label" (same class matches)."""
  positives = t.get("positives", "pair")
  if positives not in ("pair", "label"):
    raise ValueError(f"config key 'train.positives': unknown {positives!r} (use pair or label)")
  return positives == "label"


def hash_positives_by_label(t: ml_collections.ConfigDict) -> bool:
  """train.hash_positives: the hashing loss's similarity, "pair" or "label" as train.positives;
  empty (the default) follows train.positives. Set apart, a run can change the contrastive loss's
  positives while the hash codes keep learning classes."""
  positives = t.get("hash_positives", "")
  if positives == "":
    return positives_by_label(t)
  if positives not in ("pair", "label"):
    raise ValueError(f"config key 'train.hash_positives': unknown {positives!r} "
                     "(use pair, label, or empty to follow train.positives)")
  return positives == "label"


def label_key(config: ml_collections.ConfigDict) -> str | None:
  """The config key that makes training read each image's class, or None when none does."""
  if positives_by_label(config.train):
    return "train.positives"
  if config.model.hashing.bits and hash_positives_by_label(config.train):
    return "train.hash_positives"
  return None


def make_train_step(model: TwoTower, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict, mesh=None) -> Callable:
  """The pure update: (state, batch{'image' uint8 [B,H,W,3], 'tokens' [B,L]}) -> (state, metrics).

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
    raise ValueError(f"config key 'train.loss_sharding': unknown '{t.loss_sharding}' "
                     "(use ring, auto or all_gather)")
  ring_mesh = mesh if (multi and t.loss_sharding == "ring") else None
  gather = multi and t.loss_sharding == "all_gather"
  by_label, hash_by_label = positives_by_label(t), hash_positives_by_label(t)
  if by_label and (ring_mesh is not None or gather):
    raise ValueError("config key 'train.positives': 'label' needs train.loss_sharding='auto' "
                     "on a mesh of several data-parallel devices")
  prefix_bits = tuple(t.get("hash_prefix_bits", ()))
  if any(not 0 < b < hashing.bits for b in prefix_bits):
    raise ValueError(f"config key 'train.hash_prefix_bits': {prefix_bits} must lie strictly "
                     f"between 0 and model.hashing.bits={hashing.bits}")

  def loss_fn(params, batch, beta):
    out = model.apply({"params": params}, evaluate.normalize_images(batch["image"]),
                      batch["tokens"], hash_beta=beta)
    if gather:  # the naive baseline: every device gathers all embeddings, builds all logits
      keys = ("image", "text", "logit_scale", "logit_bias")
      whole = jax.shard_map(
          lambda o: contrastive_loss(t.loss, o, margin=t.triplet_margin), mesh=mesh,
          in_specs=({k: P() for k in keys},), out_specs=P())
      loss = whole({k: out[k] for k in keys})
    else:
      positives = None
      if by_label:  # images and captions of the same class are matches too
        positives = batch["label"][:, None] == batch["label"][None, :]
      loss = contrastive_loss(t.loss, out, mesh=ring_mesh, margin=t.triplet_margin,
                              positives=positives)
    terms = {"contrastive_loss": loss}
    if hashing.bits:
      # Relevance by pairing (image i and caption j are similar only when i == j), or by class.
      n = out["image_hash"].shape[0]
      similarity = (batch["label"][:, None] == batch["label"][None, :]).astype(jnp.float32) \
          if hash_by_label else jnp.eye(n, dtype=jnp.float32)
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
    return loss, {"logit_scale": out["logit_scale"], **terms}

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def accumulated(params, batch, beta):
    """Mean loss, metrics and gradients over `accum` micro-batches, summed in float32."""
    micro = {k: split_micro_batches(v, accum, mesh) for k, v in batch.items()}

    def one(carry, mb):
      (loss, aux), grads = grad_fn(params, mb, beta)
      total = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), carry, grads)
      return total, (loss, aux)

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    total, (losses, aux) = jax.lax.scan(one, zeros, micro)
    grads = jax.tree.map(lambda g, p: (g / accum).astype(p.dtype), total, params)
    return (losses.mean(), jax.tree.map(lambda v: v.mean(0), aux)), grads

  def train_step(state: TrainState, batch: dict):
    beta = hash_beta(state.step, t.steps, hashing.beta_start, hashing.beta_end)
    with nn.logical_axis_rules(rules):  # the model's activation constraints use these names
      if accum == 1:
        (loss, aux), grads = grad_fn(state.params, batch, beta)
      else:
        (loss, aux), grads = accumulated(state.params, batch, beta)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def compile_train_step(train_step, state_shardings, mesh):
  """jit with the state in its sharded layout, the batch split over the data-parallel axes, the
  metrics replicated and the old state's buffers donated. Call it under `jax.set_mesh(mesh)`."""
  batch_sharding = parallel.batch_sharding(mesh)  # every batch entry ('image', 'tokens', 'label')
  return jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                 out_shardings=(state_shardings, parallel.replicated(mesh)), donate_argnums=(0,))


class _PreemptionFlag:
  """Set by SIGTERM (the cloud TPU / SLURM pre-emption notice): the loop checkpoints and exits."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. a test runner thread): no handler
      self._previous = None
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _evaluate(model, params, data: RetrievalData, config, mesh) -> dict[str, float]:
  split = data.eval_splits[config.eval.split]
  out = evaluate.evaluate_split(model, params, split, mesh, config.eval.batch_size)
  if config.eval.get("label_metrics", False):  # label-only sets: metrics with relevance = class
    from rsjax import label_retrieval
    if not data.class_names or "scene" not in split.labels:
      raise ValueError("config key 'eval.label_metrics' needs a labelled data set (data.name="
                       "'annotated' with data.label_prompt)")
    out["labels"] = label_retrieval.evaluate_model(
        model, params, split, data.class_names, data.tokenizer,
        label_retrieval.config_templates(config), mesh, config.eval.batch_size)
    log(f"{config.eval.split} split, relevance by class (percent): "
        + label_retrieval.format_line(out["labels"]))
  return out


def train(config: ml_collections.ConfigDict, workdir: str, devices=None,
          crash_after_step: int | None = None) -> dict:
  """Trains (resuming from `workdir` when it holds a checkpoint), evaluates, returns eval metrics.

  `crash_after_step` raises right after that step (and its checkpoint, if one is due): tests use it
  to stand for a run killed mid-way.
  """
  t = config.train
  os.makedirs(workdir, exist_ok=True)
  parallel.initialize_distributed()  # multi-host runs: before anything touches the devices
  mesh = parallel.make_mesh(config, devices)
  parallel.check_batch(t.batch_size, mesh, grad_accum_steps(config))
  log(f"mesh {dict(mesh.shape)} over {mesh.devices.size} {mesh.devices.flat[0].platform} device(s)")

  # Input.
  data = load_retrieval_data(config, workdir)
  if data.tokenizer.vocab_size > config.model.text.vocab_size:
    raise ValueError(f"tokenizer has {data.tokenizer.vocab_size} pieces but config key "
                     f"'model.text.vocab_size' is {config.model.text.vocab_size}")
  label_source = label_key(config)
  if label_source and data.train_labels is None:
    raise ValueError(f"config key '{label_source}' is 'label' but the train split has no class "
                     "labels (in-memory label-only sets have them: data.name='annotated' with "
                     "data.label_prompt and stream=False)")
  if hasattr(data, "train_iterator"):  # a streamed set (data.name="tfds"): grain decodes + augments
    train_iter = data.train_iterator(t.batch_size, t.seed, jax.process_index(), jax.process_count())
  else:
    train_iter = pipeline.train_iterator(
        data.train_images, data.train_tokens, t.batch_size, t.seed,
        jax.process_index(), jax.process_count(),
        labels=data.train_labels if label_source else None,
        dihedral=data.train_dihedral)

  # Model, optimizer, sharded state: restored from the latest checkpoint, else initialised.
  model = create_model(config)
  tx = make_optimizer(t)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=t.keep_checkpoints)
  abstract, shardings = state_layout(model, tx, config, mesh)
  start, state = ckpt.restore_latest(abstract, train_iter, config,
                                     fallback=t.get("restore_fallback", False), log=log)
  if start is not None:
    log(f"resumed from checkpoint at step {start}")
  elif config.get("init") and config.init.checkpoint:  # converted weights (`rsjax convert`)
    from rsjax.convert import load_init_params
    params = load_init_params(config.init.checkpoint, config, abstract.params, log)
    state = jax.jit(lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)),
                    out_shardings=shardings)(params)
  else:
    state, shardings = init_state(model, tx, config, mesh, jax.random.key(t.seed))
  start = int(start or 0)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  log(f"model: {n_params / 1e6:.2f}M parameters")

  step0_path = os.path.join(workdir, "step0_eval.json")
  if config.eval.at_step0 and not os.path.exists(step0_path):
    if start != 0:
      log("no step-0 evaluation recorded before this checkpoint; skipping it")
    else:
      step0 = _evaluate(model, state.params, data, config, mesh)
      _write_json(step0_path, step0)
      log(f"step 0: {config.eval.split} mR {step0['mR']:.2f}")

  step_fn = compile_train_step(make_train_step(model, tx, config, mesh), shardings, mesh)
  schedule = learning_rate_schedule(t)
  writer = MetricWriter(os.path.join(workdir, "metrics.jsonl"), resume_step=start)
  tick, tick_step = time.perf_counter(), start
  skipped = consecutive = 0  # non-finite steps skipped under train.nonfinite=skip
  with _PreemptionFlag() as preempt, jax.set_mesh(mesh), \
      nn.logical_axis_rules(parallel.rules_for(config)):
    for step in range(start + 1, t.steps + 1):
      batch = parallel.shard_batch(next(train_iter), mesh)
      state, m = step_fn(state, batch)
      loss = float(jax.block_until_ready(m["loss"]))  # blocking also avoids CPU collective stalls
      if not (np.isfinite(loss) and np.isfinite(float(m["grad_norm"]))):
        what = f"loss {loss}, gradient norm {float(m['grad_norm'])}"
        if t.get("nonfinite", "stop") != "skip":
          raise NonFiniteLossError(
              f"non-finite {what} at step {step}; stopping. The last good checkpoint is step "
              f"{ckpt.latest_step()} in {ckpt.directory} (train.nonfinite=skip would skip such "
              "steps instead)")
        skipped, consecutive = skipped + 1, consecutive + 1
        log(f"step {step}: non-finite {what}; update skipped ({skipped} skipped so far)")
        writer.write({"step": step, "skipped_steps": skipped})
        if consecutive > t.get("max_consecutive_skips", 10):
          raise NonFiniteLossError(
              f"{consecutive} non-finite steps in a row up to step {step} (more than "
              f"train.max_consecutive_skips={t.get('max_consecutive_skips', 10)}); stopping. "
              f"The last good checkpoint is step {ckpt.latest_step()} in {ckpt.directory}")
      else:
        consecutive = 0
      if step % t.log_every == 0 or step == t.steps:
        now = time.perf_counter()
        rate = (step - tick_step) * t.batch_size / max(now - tick, 1e-9)
        row = {"step": step, "loss": loss, "lr": float(schedule(step - 1)),
               **{k: float(v) for k, v in m.items() if k != "loss"}, "images_per_s": rate}
        writer.write(row)
        eta = (t.steps - step) * t.batch_size / max(rate, 1e-9)
        log(f"step {step:>6}/{t.steps} | loss {loss:.4f} | lr {row['lr']:.2e} | "
            f"{rate:7.1f} img/s | eta {eta / 60:.1f} min")
        tick, tick_step = now, step
      if step == start + 1:  # leave compilation out of the images/s figure
        tick, tick_step = time.perf_counter(), step
      if config.eval.every and step % config.eval.every == 0 and step != t.steps:
        eval_start = time.perf_counter()
        periodic = evaluate.evaluate_split(model, state.params, data.eval_splits["val"], mesh,
                                           config.eval.batch_size)
        writer.write({"step": step, **{f"val_{k}": v for k, v in periodic.items()}})
        log(f"step {step:>6}/{t.steps} | val mR {periodic['mR']:.2f} "
            f"(R@1/5/10 i2t {periodic['i2t_r1']:.1f}/{periodic['i2t_r5']:.1f}/"
            f"{periodic['i2t_r10']:.1f}, t2i {periodic['t2i_r1']:.1f}/{periodic['t2i_r5']:.1f}/"
            f"{periodic['t2i_r10']:.1f})")
        tick += time.perf_counter() - eval_start  # keep evaluation out of the images/s figure
      due = t.checkpoint_every and step % t.checkpoint_every == 0
      if due or step == t.steps or preempt.requested:
        ckpt.save(step, state, train_iter, config)
      if preempt.requested:
        log(f"SIGTERM received: checkpoint written at step {step}; exiting")
        ckpt.close()
        return {}
      if crash_after_step == step:
        raise RuntimeError(f"simulated crash after step {step}")
  ckpt.close()

  results = _evaluate(model, state.params, data, config, mesh)
  if os.path.exists(step0_path):
    with open(step0_path) as f:
      results["step0"] = json.load(f)
  results["step"] = t.steps
  _write_json(os.path.join(workdir, "eval.json"), results)
  rows = {"step 0 (untrained)": results["step0"]} if "step0" in results else {}
  rows[f"step {t.steps}"] = results
  log(f"{config.eval.split} split retrieval (percent):\n" + evaluate.format_table(rows))
  return results


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
  """`rsjax eval`: evaluates the latest checkpoint in `workdir` on config.eval.split."""
  parallel.initialize_distributed()
  mesh = parallel.make_mesh(config, devices)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  step = ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {ckpt.directory}; train first")
  data = load_retrieval_data(config, workdir)
  model = create_model(config)
  abstract, _ = state_layout(model, make_optimizer(config.train), config, mesh)
  state = ckpt.restore(step, abstract, config=config)
  ckpt.close()
  results = _evaluate(model, state.params, data, config, mesh)
  results["step"] = step
  _write_json(os.path.join(workdir, f"eval_{config.eval.split}_step{step}.json"), results)
  log(f"{config.eval.split} split retrieval at step {step} (percent):\n"
      + evaluate.format_table({f"step {step}": results}))
  return results


def _write_json(path: str, obj: dict) -> None:
  if jax.process_index() != 0:
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)
