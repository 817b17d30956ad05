"""rsjax against open_clip: the identical CLIP trained the identical way on RSSCN7, on this CPU.

Both frameworks build the same architecture (a ViT-Ti/16 image tower at 128 px and a 6-layer
causal text transformer: equal widths, depths, heads and parameter counts, checked) and start from
the same weights: rsjax initialises them from the seed, rsjax.convert.to_open_clip hands them over.
One numpy pipeline makes every step's batch (seeded shuffle, random flips and quarter turns, a
random class-prompt caption per image) and both steps get the same arrays; both use AdamW with the
same schedule, betas, eps and weight decay on the same tensors, global-norm clipping, CLIP's softmax
loss and float32. Each side runs what its users run: rsjax.train's compiled step, and open_clip's
model with its ClipLoss, torch AdamW, clip_grad_norm_ and the logit-scale clamp of its train loop.
Each (framework, seed) trains in its own subprocess, so that its peak resident memory is its own;
the runs alternate between the frameworks so that load from other processes hits both alike.
Both workers run with glibc's huge-page tunable, which the `rsjax` command sets for itself
(rsjax/host_memory.py; benchmarks/host_memory.py measures its effect on the rsjax step). The rsjax
worker splits the CPU into two JAX devices, as `RSJAX_CPU_DEVICES=2 rsjax train` does
(rsjax/host_devices.py; opt-in, as it costs bitwise-equal resumes), and its mesh gives each device
half of every batch. A third run per seed, rsjax_1dev, is rsjax as it comes (one CPU device): its
speed is what a user gets by default, and since it is the same computation as the split run with
other summation orders, the metric difference between the two rsjax runs measures how far float
rounding alone moves the val metrics, the yardstick for the rsjax - open_clip differences.

Measured: median train-step time (host batch in, updated parameters out; the first steps left
out), images/s of the image tower alone (inference, the same batch), peak RSS, achieved FLOP/s and
its fraction of the machine's peak (the better of a 4096^3 float32 matmul in torch and in JAX), and
after training the val metrics of rsjax.evaluation.labels with relevance = same class: zero-shot
top-1, text->image mAP of the class prompts, image->image mAP@20 with dense embeddings and with
16/32/64-bit SimHash codes (one projection for both frameworks).

  .venv/bin/python benchmarks/vs_open_clip.py           # two seeds each, about 10-15 minutes
  .venv/bin/python benchmarks/vs_open_clip.py --quick   # one seed, a few steps: speed only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _path in (REPO, HERE, os.path.join(REPO, "tests")):  # rsjax, common, torchvision_shim
  if _path not in sys.path:
    sys.path.insert(0, _path)

from common import report  # noqa: E402  (stdlib only: the workers import jax or torch, not both)
from rsjax import host_memory  # noqa: E402  (stdlib only)

# rsjax: the two-device CPU split; rsjax_1dev: one device, rsjax's default (see the docstring).
FRAMEWORKS = ("rsjax", "open_clip", "rsjax_1dev")
RSJAX_DEVICES = {"rsjax": "2", "rsjax_1dev": "1"}
# Captions of the class-label set: each train image gets one at random per step; the class
# embedding for evaluation is the mean over all of them. No direction words, so the flips and
# quarter turns of the images leave them true.
TEMPLATES = (
    "an aerial image of {}.",
    "a satellite image of {}.",
    "a remote sensing image of {}.",
    "an overhead view of {}.",
)
CODE_BITS = (16, 32, 64)
SIMHASH_SEED = 0  # the same projection for every model: codes differ only by the embeddings
IMAGE_SIZE = 128
CONTEXT = 16
# AdamW as in CLIP (betas, eps, decay), the same in both frameworks; a short warmup then cosine.
TRAIN = dict(learning_rate=5e-4, warmup_steps=10, final_lr_fraction=0.0, weight_decay=0.1,
             b1=0.9, b2=0.98, eps=1e-6, grad_clip_norm=1.0)
SKIP_STEPS = 5  # steps left out of the median (first executions, allocator warm-up)
ENCODE_REPEATS = 10


# ---------------------------------------------------------------------------------------------
# The model and run config (rsjax's form; open_clip's is derived from it).

def model_config(vocab_size: int, tiny: bool = False):
  """rsjax model section: ViT-Ti/16 (192 wide, 12 deep, 3 heads) and a 6-layer text tower of the
  same width, CLIP layout (patch stem, [CLS] pooling, causal text pooled at the largest id, CLIP's
  input normalisation), which rsjax.convert maps one to one onto open_clip. `tiny`: a two-layer
  model of width 32 for tests."""
  from rsjax.models.registry import default_model_config

  c = default_model_config()
  c.embed_dim = 16 if tiny else 128
  c.activation = "gelu"  # exact (erf) GELU, open_clip's nn.GELU
  width, depth, heads, text_depth = (32, 2, 2, 2) if tiny else (192, 12, 3, 6)
  c.image.update(width=width, depth=depth, heads=heads, patch_size=8 if tiny else 16,
                 mlp_ratio=4.0, stem="patch", pool="cls", input_norm="clip")
  c.text.update(vocab_size=vocab_size, context_length=8 if tiny else CONTEXT, width=width,
                depth=text_depth, heads=heads, mlp_ratio=4.0, causal=True, pool="argmax")
  return c


def run_config(model_cfg, image_size: int, steps: int, batch: int, seed: int, **train):
  """A whole rsjax run config (the smoke config's keys) for `model_cfg`, CLIP loss, TRAIN AdamW;
  `train` overrides TRAIN's entries."""
  from rsjax.config import config_module

  c = config_module(os.path.join(REPO, "configs", "smoke.py")).get_config()
  c.model = model_cfg
  c.data.image_size = image_size
  c.train.update(seed=seed, steps=steps, batch_size=batch, loss="clip", **{**TRAIN, **train})
  return c


def decayed_keys(config, flat: dict[str, np.ndarray]) -> list[str]:
  """open_clip names of the tensors rsjax.optim.make_optimizer applies weight decay to.

  Asked of the optimizer itself (one update of zero gradients at a constant rate: only weight
  decay moves a parameter), so the torch side follows whatever mask rsjax uses."""
  import flax
  import jax
  import jax.numpy as jnp

  from rsjax import optim
  from rsjax.convert import torch_key

  probe = config.train.copy_and_resolve_references()
  probe.update(warmup_steps=0, learning_rate=1.0, final_lr_fraction=1.0, steps=2)
  tx = optim.make_optimizer(probe)
  params = flax.traverse_util.unflatten_dict(
      {k: jnp.ones(v.shape, jnp.float32) for k, v in flat.items()}, sep="/")
  update = jax.jit(lambda p: tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)[0])
  moved = flax.traverse_util.flatten_dict(update(params), sep="/")
  return sorted(torch_key(k)[0] for k, v in moved.items() if np.any(np.asarray(v) != 0))


# ---------------------------------------------------------------------------------------------
# Data: RSSCN7 at 128 px, class-prompt captions, one batch plan for both frameworks.

def prepare_data(path: str, out: str, image_size: int = IMAGE_SIZE,
                 context: int = CONTEXT) -> dict:
  """Decodes RSSCN7 train/val, tokenizes the class prompts, writes `out` (npz). Returns facts.

  Arrays: train_images [N, S, S, 3] uint8, train_labels [N], val_images, val_labels,
  prompt_ids [C, T, L] int32 (class c, template t). Ids: rsjax's SentencePiece pieces, 0 padding,
  and an end-of-text id equal to the largest id (the vocabulary size), so both text towers pool
  the same position (rsjax text pool 'argmax', open_clip's default)."""
  import ml_collections

  from rsjax.data.annotated import class_labels, decode_records, read_checked
  from rsjax.data.tokenize import tokenizer_for
  from rsjax.data.tokenizers import EOS

  data = ml_collections.ConfigDict(dict(
      format="captions_jsonl", path=path, image_root="", caption_field="captions",
      label_prompt=tuple(t.replace("{}", "{label}") for t in TEMPLATES), skip_bad_records=False,
      image_size=image_size, bands=(), max_value=0.0))
  recs, bad = read_checked(data)
  by_split = {s: [r for r in recs if r.split == s] for s in ("train", "val")}
  names, labels = class_labels(by_split)
  images = {s: decode_records(rs, data, bad)[0] for s, rs in by_split.items()}
  prompts = [t.format(n) for n in names for t in TEMPLATES]
  tokenizer = tokenizer_for(prompts, os.path.dirname(out), vocab_size=256)
  ids = tokenizer.encode(prompts, context)
  eot = tokenizer.vocab_size  # one past the pieces: the largest id
  ids = np.where(ids == EOS, eot, ids).astype(np.int32)
  assert (ids.max(1) == eot).all() and (ids[:, 0] != 0).all()
  np.savez(out, train_images=images["train"], train_labels=labels["train"],
           val_images=images["val"], val_labels=labels["val"],
           prompt_ids=ids.reshape(len(names), len(TEMPLATES), context))
  return {"classes": list(names), "vocab_size": eot + 1, "train": len(labels["train"]),
          "val": len(labels["val"])}


def batch_plan(n: int, steps: int, batch: int, templates: int, seed: int):
  """Per step: (image indices [B], flips [B] bool, quarter turns [B], template picks [B]).

  Seeded epoch shuffles, as a data loader would give; the same plan feeds both frameworks."""
  rng = np.random.default_rng(seed)
  order = np.zeros(0, np.int64)
  for _ in range(steps):
    while len(order) < batch:
      order = np.concatenate([order, rng.permutation(n)])
    idx, order = order[:batch], order[batch:]
    yield (idx, rng.random(batch) < 0.5, rng.integers(0, 4, batch),
           rng.integers(0, templates, batch))


def make_batch(images: np.ndarray, labels: np.ndarray, prompt_ids: np.ndarray, plan) -> dict:
  """One step's arrays: image uint8 [B, S, S, 3] flipped / turned, tokens int32 [B, L]."""
  idx, flips, turns, picks = plan
  out = images[idx]
  for flip in (False, True):
    for k in range(4):
      sel = (flips == flip) & (turns == k)
      if sel.any():
        part = np.rot90(out[sel], k, axes=(1, 2))
        out[sel] = part[:, :, ::-1] if flip else part
  return {"image": np.ascontiguousarray(out), "tokens": prompt_ids[labels[idx], picks]}


# ---------------------------------------------------------------------------------------------
# rsjax side.

def rsjax_init(config, seed: int, devices=None) -> dict[str, np.ndarray]:
  """rsjax's initial parameters for `seed` (rsjax.state.init_state), flat {path: float32}."""
  import flax
  import jax

  from rsjax import optim, parallel
  from rsjax import state as state_lib

  model, tx = state_lib.create_model(config), optim.make_optimizer(config.train)
  mesh = parallel.make_mesh(config, devices)
  state, _ = state_lib.init_state(model, tx, config, mesh, jax.random.key(seed))
  return {k: np.asarray(v) for k, v in
          flax.traverse_util.flatten_dict(jax.device_get(state.params), sep="/").items()}


class RsjaxTrainer:
  """rsjax.train's step (make_train_step + compile_train_step, compiled ahead on the first batch)
  from the given flat parameters, as `rsjax train` starts from converted weights. `devices`:
  the mesh's devices (default all: one on a CPU host)."""

  def __init__(self, config, flat: dict[str, np.ndarray], devices=None):
    import flax
    import jax
    import jax.numpy as jnp

    from rsjax import optim, parallel
    from rsjax import state as state_lib
    from rsjax.evaluation import encode
    from rsjax.train import step as train_step

    self.mesh = parallel.make_mesh(config, devices)
    self.rules = parallel.rules_for(config)
    model = state_lib.create_model(config)
    tx = optim.make_optimizer(config.train)
    _, shardings = state_lib.state_layout(model, tx, config, self.mesh)
    params = flax.traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, "/")
    self.state = jax.jit(lambda p: state_lib.TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)),
                         out_shardings=shardings)(params)
    self.jitted = train_step.compile_train_step(
        train_step.make_train_step(model, tx, config, self.mesh), shardings, self.mesh)
    self.compiled = None
    self.enc_img, self.enc_txt = encode.encoders(model)

  def step(self, batch: dict) -> float:
    """One update on host arrays {'image' uint8 [B,S,S,3], 'tokens' int32 [B,L]}; blocks on the
    new state. Returns the loss."""
    import flax.linen as nn
    import jax

    from rsjax import parallel

    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      sharded = parallel.shard_batch(batch, self.mesh)
      if self.compiled is None:
        self.compiled = self.jitted.lower(self.state, sharded).compile()
      self.state, m = self.compiled(self.state, sharded)
      jax.block_until_ready((self.state, m))
    return float(m["loss"])

  def params(self) -> dict[str, np.ndarray]:
    import flax
    import jax
    return {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(
        jax.device_get(self.state.params), sep="/").items()}

  def encode_image(self, images: np.ndarray) -> np.ndarray:
    """uint8 [B, S, S, 3] -> unit-norm [B, E] (rsjax.evaluation.encode's jitted encoder)."""
    return self._encode(self.enc_img, images)

  def _encode(self, encode, x: np.ndarray) -> np.ndarray:
    """`encode` on x split over the mesh's data axis, as encode.encode_in_batches does."""
    import jax

    from rsjax import parallel
    with jax.set_mesh(self.mesh):
      sharded = parallel.shard_batch({"x": x}, self.mesh)["x"]
      return np.asarray(jax.block_until_ready(encode(self.state.params, sharded)))

  def encode_text(self, ids: np.ndarray) -> np.ndarray:
    return self._encode(self.enc_txt, ids)


# ---------------------------------------------------------------------------------------------
# open_clip side.

def open_clip_model(oc_cfg: dict, state: dict[str, np.ndarray]):
  """open_clip's CLIP built from its model config, loaded strictly with `state`."""
  import torch

  from torchvision_shim import import_open_clip

  model = import_open_clip().model.CLIP(**oc_cfg, output_dict=True)
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
  return model


def torch_images(images: np.ndarray):
  """uint8 [B, S, S, 3] -> float32 [B, 3, S, S] normalised with open_clip's OpenAI mean / std
  (its preprocessing after the resize; rsjax's input_norm "clip" applies the same constants)."""
  import torch
  from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

  x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
  mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
  return ((x - mean) / std).contiguous()


class OpenClipTrainer:
  """open_clip's CLIP trained as open_clip's train loop does it: ClipLoss, torch AdamW with a
  decayed and an undecayed parameter group (`decayed`: the tensors rsjax decays), clip_grad_norm_,
  the logit scale clamped to [0, log 100] after each update. `train`: weight_decay, b1, b2, eps,
  grad_clip_norm."""

  def __init__(self, oc_cfg: dict, state: dict[str, np.ndarray], decayed: list[str], train: dict):
    import torch

    from torchvision_shim import import_open_clip

    self.loss_fn = import_open_clip().loss.ClipLoss()
    self.model = open_clip_model(oc_cfg, state)
    named = dict(self.model.named_parameters())
    unknown = set(decayed) - set(named)
    if unknown:
      raise ValueError(f"decayed tensors open_clip lacks: {sorted(unknown)}")
    groups = [{"params": [p for n, p in named.items() if n in decayed],
               "weight_decay": train["weight_decay"]},
              {"params": [p for n, p in named.items() if n not in decayed], "weight_decay": 0.0}]
    self.opt = torch.optim.AdamW(groups, lr=0.0, betas=(train["b1"], train["b2"]), eps=train["eps"])
    self.clip_norm = train["grad_clip_norm"]

  def step(self, batch: dict, lr: float) -> float:
    """One update at learning rate `lr` (rsjax's schedule at this step). Returns the loss."""
    import torch

    self.model.train()
    images, tokens = torch_images(batch["image"]), torch.from_numpy(batch["tokens"]).long()
    for group in self.opt.param_groups:
      group["lr"] = lr
    self.opt.zero_grad(set_to_none=True)
    out = self.model(images, tokens)
    loss = self.loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
    loss.backward()
    if self.clip_norm > 0:
      torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
    self.opt.step()
    with torch.no_grad():
      self.model.logit_scale.clamp_(0, math.log(100))
    return float(loss.detach())

  def params(self) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in self.model.state_dict().items()}

  def encode_image(self, images: np.ndarray) -> np.ndarray:
    import torch
    self.model.eval()
    with torch.inference_mode():
      return self.model.encode_image(torch_images(images), normalize=True).numpy()

  def encode_text(self, ids: np.ndarray) -> np.ndarray:
    import torch
    self.model.eval()
    with torch.inference_mode():
      return self.model.encode_text(torch.from_numpy(ids).long(), normalize=True).numpy()


def torch_train_flops(oc_cfg: dict, state: dict[str, np.ndarray], batch: dict) -> float:
  """FLOPs of one forward + backward of the open_clip model on `batch` (torch's FlopCounterMode:
  matmuls, convolutions and attention; no elementwise work, no optimizer)."""
  import torch
  from torch.utils.flop_counter import FlopCounterMode

  from torchvision_shim import import_open_clip

  model = open_clip_model(oc_cfg, state)
  loss_fn = import_open_clip().loss.ClipLoss()
  with FlopCounterMode(display=False) as counter:
    out = model(torch_images(batch["image"]), torch.from_numpy(batch["tokens"]).long())
    loss_fn(out["image_features"], out["text_features"], out["logit_scale"]).backward()
  return float(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------
# Matmul peak.

def matmul_peaks(n: int, repeats: int) -> dict[str, float]:
  """Best FLOP/s of an n x n x n float32 matmul in torch (2 threads) and in JAX, interleaved."""
  import jax
  import jax.numpy as jnp
  import torch

  torch.set_num_threads(2)
  a = torch.randn(n, n)
  b = torch.randn(n, n)
  x = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  y = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  mm = jax.jit(jnp.matmul)
  mm(x, y).block_until_ready()
  torch.mm(a, b)
  best = {"torch": math.inf, "jax": math.inf}
  for _ in range(repeats):
    t = time.perf_counter()
    torch.mm(a, b)
    best["torch"] = min(best["torch"], time.perf_counter() - t)
    t = time.perf_counter()
    mm(x, y).block_until_ready()
    best["jax"] = min(best["jax"], time.perf_counter() - t)
  return {k: 2 * n ** 3 / v for k, v in best.items()}


# ---------------------------------------------------------------------------------------------
# Workers: one (framework, seed) per process.

def cpu_model() -> str:
  """The CPU as /proc/cpuinfo names it, with its family and model numbers: results from two hosts
  of one name can differ (AMD family 26 is Zen 5)."""
  fields = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
  except OSError:
    return "unknown"
  return (f"{fields.get('model name', 'unknown')} (family {fields.get('cpu family', '?')}, "
          f"model {fields.get('model', '?')})")


def _status_mib(field: str) -> float:
  """A memory field of /proc/self/status in MiB: VmRSS (now) or VmHWM (peak)."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024
  return float("nan")


def _rss_mib() -> float:
  return _status_mib("VmRSS")


def _peak_mib() -> float:
  # Not getrusage's ru_maxrss: a forked child inherits the parent's high-water mark through exec.
  # VmHWM belongs to the address space this process got at exec.
  return _status_mib("VmHWM")


def _log(tag: str, msg: str) -> None:
  print(f"[{tag}] {msg}", flush=True)


def worker(spec_path: str, framework: str) -> None:
  """Trains one framework from the spec's weights and batch plan, measures, writes results."""
  with open(spec_path) as f:
    spec = json.load(f)
  tag = f"{framework} seed {spec['seed']}"
  data = dict(np.load(spec["data"]))
  out = (_open_clip_run(spec, data, tag) if framework == "open_clip"
         else _rsjax_run(spec, data, tag, RSJAX_DEVICES[framework]))
  np.savez(spec["out"] + f".{framework}.npz", val_emb=out.pop("val_emb"),
           prompt_emb=out.pop("prompt_emb"))
  with open(spec["out"] + f".{framework}.json", "w") as f:
    json.dump(out, f)


def _train_loop(step, spec: dict, data: dict, tag: str) -> tuple[list[float], list[float]]:
  """Runs every planned step; returns (step seconds, losses). `step(batch, i)` blocks."""
  times, losses = [], []
  plan = batch_plan(len(data["train_labels"]), spec["steps"], spec["batch"],
                    data["prompt_ids"].shape[1], spec["seed"])
  every = max(1, spec["steps"] // 10)
  for i, p in enumerate(plan):
    batch = make_batch(data["train_images"], data["train_labels"], data["prompt_ids"], p)
    t = time.perf_counter()
    losses.append(step(batch, i))
    times.append(time.perf_counter() - t)
    if (i + 1) % every == 0 or i + 1 == spec["steps"]:
      _log(tag, f"step {i + 1}/{spec['steps']} loss {losses[-1]:.4f} "
                f"median step {np.median(times[SKIP_STEPS:] or times):.3f} s")
  return times, losses


def _encode_rate(encode, images: np.ndarray) -> float:
  """Images/s of `encode(images)` (blocking), median of ENCODE_REPEATS after two warm-ups."""
  for _ in range(2):
    encode(images)
  times = []
  for _ in range(ENCODE_REPEATS):
    t = time.perf_counter()
    encode(images)
    times.append(time.perf_counter() - t)
  return len(images) / float(np.median(times))


def _in_batches(encode, x: np.ndarray, batch: int) -> np.ndarray:
  """encode over x [N, ...] in batches of `batch` (the last padded) -> [N, E] float32."""
  out = []
  for a in range(0, len(x), batch):
    part = x[a:a + batch]
    pad = batch - len(part)
    if pad:
      part = np.concatenate([part, np.repeat(part[-1:], pad, 0)])
    out.append(np.asarray(encode(part), np.float32)[:batch - pad])
  return np.concatenate(out)


def _measure(trainer, step, spec: dict, data: dict, tag: str) -> dict:
  """Trains, then times the image encoder and embeds the val images and the class prompts."""
  rss0, peak0 = _rss_mib(), _peak_mib()
  _log(tag, f"model ready; RSS {rss0:.0f} MiB; training {spec['steps']} steps")
  start = time.perf_counter()
  times, losses = _train_loop(step, spec, data, tag)
  prompts = data["prompt_ids"].reshape(-1, data["prompt_ids"].shape[-1])
  out = {"step_times": times, "losses": losses,
         "encode_images_per_s": _encode_rate(trainer.encode_image,
                                             data["val_images"][:spec["batch"]]),
         "val_emb": _in_batches(trainer.encode_image, data["val_images"], spec["batch"]),
         "prompt_emb": _in_batches(trainer.encode_text, prompts, spec["batch"]),
         "rss_before_mib": rss0, "peak_before_mib": peak0, "peak_rss_mib": _peak_mib()}
  _log(tag, f"done in {time.perf_counter() - start:.0f} s; peak RSS {out['peak_rss_mib']:.0f} MiB")
  return out


def _rsjax_run(spec: dict, data: dict, tag: str, devices: str) -> dict:
  from rsjax import host_devices

  # rsjax's CPU split (RSJAX_CPU_DEVICES), set before JAX starts: see the docstring.
  os.environ[host_devices.ENV] = devices
  _log(tag, f"CPU devices: {host_devices.use_cpu_devices()} ({host_devices.ENV})")
  config = run_config(model_config(spec["vocab_size"], spec["tiny"]), spec["image_size"],
                      spec["steps"], spec["batch"], spec["seed"])
  flat = dict(np.load(spec["rsjax_params"]))
  trainer = RsjaxTrainer(config, flat)
  out = _measure(trainer, lambda batch, i: trainer.step(batch), spec, data, tag)
  out["xla_flops"] = float(trainer.compiled.cost_analysis().get("flops", float("nan")))
  out["params"] = int(sum(v.size for v in flat.values()))
  return out


def _open_clip_run(spec: dict, data: dict, tag: str) -> dict:
  import torch

  torch.set_num_threads(2)
  state = dict(np.load(spec["open_clip_params"]))
  trainer = OpenClipTrainer(spec["open_clip_config"], state, spec["decayed"], spec["train"])
  out = _measure(trainer, lambda batch, i: trainer.step(batch, spec["lrs"][i]), spec, data, tag)
  out["params"] = int(sum(p.numel() for p in trainer.model.parameters()))
  return out


# ---------------------------------------------------------------------------------------------
# Parent: prepare, run the workers, score, print one table.

def class_embeddings(prompt_emb: np.ndarray, classes: int) -> np.ndarray:
  """Unit-norm prompt embeddings [C*T, E] -> mean per class, renormalised [C, E]
  (rsjax.evaluation.zero_shot.class_embeddings' rule, applied alike to both frameworks)."""
  emb = prompt_emb.reshape(classes, -1, prompt_emb.shape[-1]).mean(1)
  return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def score(val_emb: np.ndarray, prompt_emb: np.ndarray, labels: np.ndarray, classes: int) -> dict:
  """rsjax.evaluation.labels metrics (percent), SimHash codes of SIMHASH_SEED."""
  from rsjax.evaluation.labels import label_metrics, simhash_codes

  codes = {b: simhash_codes(val_emb, b, seed=SIMHASH_SEED) for b in CODE_BITS}
  return label_metrics(val_emb, labels, class_embeddings(prompt_emb, classes), codes)


def learning_rates(config) -> list[float]:
  """rsjax's learning rate at each step (rsjax.optim.learning_rate_schedule), for torch."""
  from rsjax import optim

  schedule = optim.learning_rate_schedule(config.train)
  return [float(schedule(i)) for i in range(config.train.steps)]


def _prepare_seed(args, workdir: str, facts: dict, seed: int) -> tuple[str, int]:
  """Initial weights of `seed` in both layouts and the spec the workers read. Returns (spec path,
  parameter count), the count checked equal in both frameworks."""
  from rsjax import convert

  config = run_config(model_config(facts["vocab_size"], args.tiny), args.image_size, args.steps,
                      args.batch, seed)
  flat = rsjax_init(config, seed)
  state = convert.to_open_clip(flat, config.model)
  oc_cfg = convert.open_clip_config(config.model, args.image_size)
  n_rsjax = int(sum(v.size for v in flat.values()))
  n_torch = int(sum(p.numel() for p in open_clip_model(oc_cfg, state).parameters()))
  if n_rsjax != n_torch:
    raise SystemExit(f"parameter counts differ: rsjax {n_rsjax}, open_clip {n_torch}")
  prefix = os.path.join(workdir, f"seed{seed}")
  np.savez(prefix + ".rsjax_params.npz", **flat)
  np.savez(prefix + ".open_clip_params.npz", **state)
  spec = {"seed": seed, "steps": args.steps, "batch": args.batch, "image_size": args.image_size,
          "tiny": args.tiny, "vocab_size": facts["vocab_size"], "data": facts["path"],
          "rsjax_params": prefix + ".rsjax_params.npz",
          "open_clip_params": prefix + ".open_clip_params.npz", "open_clip_config": oc_cfg,
          "decayed": decayed_keys(config, flat), "train": dict(TRAIN),
          "lrs": learning_rates(config), "out": prefix}
  with open(prefix + ".spec.json", "w") as f:
    json.dump(spec, f)
  return prefix + ".spec.json", n_rsjax


# ---------------------------------------------------------------------------------------------
# Load from other processes: the machine is shared, and torch's OpenMP threads slow down many
# times over when another process holds a core (measured here: a small open_clip step 30x slower
# beside one busy process), so the parent waits for a quiet machine and reports what it got.

def _busy_cpu_s() -> float:
  """CPU seconds all processes of the machine have used since boot (/proc/stat)."""
  with open("/proc/stat") as f:
    ticks = [int(v) for v in f.readline().split()[1:9]]
  return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def _own_cpu_s() -> float:
  """CPU seconds of this process and its finished children."""
  own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class OthersMeter:
  """Share of the machine (percent of wall time x cores) used by other processes."""

  def __init__(self):
    self.wall, self.busy, self.own = time.perf_counter(), _busy_cpu_s(), _own_cpu_s()

  def percent(self) -> float:
    others = (_busy_cpu_s() - self.busy) - (_own_cpu_s() - self.own)
    wall = max(time.perf_counter() - self.wall, 1e-9)
    return max(0.0, 100.0 * others / (wall * os.cpu_count()))


def wait_quiet(deadline: float, threshold: float = 10.0, window: float = 5.0) -> float:
  """Waits until other processes use under `threshold` percent of the machine over `window`
  seconds, or until time.perf_counter() passes `deadline`. Returns their last measured share."""
  while True:
    meter = OthersMeter()
    time.sleep(window)
    share = meter.percent()
    if share < threshold or time.perf_counter() >= deadline:
      return share
    print(f"waiting for a quiet machine: other processes use {share:.0f}%", flush=True)


def worker_environment() -> dict[str, str]:
  """Both frameworks' workers run with glibc's huge-page tunable, which the `rsjax` command sets
  for itself (rsjax/host_memory.py): one allocator setting for both, so that the table compares
  the frameworks and not their allocators (open_clip's step is unchanged by it, measured)."""
  return host_memory.environment_with_huge_pages(dict(os.environ)) or dict(os.environ)


def _run_worker(spec_path: str, framework: str) -> dict:
  """Runs one worker process; returns its results and embeddings, with others_cpu_pct: the share
  of the machine other processes used meanwhile."""
  meter = OthersMeter()
  subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", framework,
                  "--spec", spec_path], check=True, env=worker_environment())
  others = meter.percent()
  prefix = spec_path[:-len(".spec.json")]
  with open(f"{prefix}.{framework}.json") as f:
    out = json.load(f)
  out.update(dict(np.load(f"{prefix}.{framework}.npz")))
  out["others_cpu_pct"] = others
  return out


# ---------------------------------------------------------------------------------------------
# The table.

def _row(framework: str, seed, r: dict, flops: float, peak: float) -> dict:
  step = float(np.median(r["step_times"][SKIP_STEPS:] or r["step_times"]))
  row = {"framework": framework, "seed": seed, "params_M": r["params"] / 1e6,
         "step_s": step, "train_img_per_s": r["batch"] / step,
         "encode_img_per_s": r["encode_images_per_s"], "peak_rss_MiB": r["peak_rss_mib"],
         "GFLOP_per_s": flops / step / 1e9, "pct_of_peak": 100.0 * flops / step / peak,
         "final_loss": float(np.mean(r["losses"][-5:])), "others_cpu_pct": r["others_cpu_pct"]}
  row.update(r.get("metrics", {}))
  return row


def _mean_row(rows: list[dict], framework: str) -> dict:
  mine = [r for r in rows if r["framework"] == framework]
  out = {"framework": framework, "seed": "mean"}
  for k, v in mine[0].items():
    if isinstance(v, float):
      out[k] = float(np.mean([r[k] for r in mine]))
  return out


QUALITY = ("zero_shot_top1", "i2i_map@20_dense")  # the metrics the targets name


def _is_metric(key: str) -> bool:
  return "map" in key or "top1" in key


def _compare(a: dict, b: dict) -> tuple[dict, dict]:
  """Rows a / b (every float column) and a - b (the val metrics, percentage points) of two mean
  rows."""
  ratio = {"framework": f"{a['framework']} / {b['framework']}", "seed": "mean"}
  diff = {"framework": f"{a['framework']} - {b['framework']} (points)", "seed": "mean"}
  for k, v in a.items():
    if isinstance(v, float) and k not in ("params_M", "others_cpu_pct") and k in b:
      ratio[k] = v / b[k] if b[k] else float("nan")
      if _is_metric(k):
        diff[k] = v - b[k]
  return ratio, diff


def summarise(rows: list[dict], peaks: dict) -> tuple[dict, dict]:
  """Appends mean rows (several seeds), each rsjax run's ratio to open_clip and metric differences
  (percentage points), the rounding yardstick (rsjax - rsjax_1dev, the same computation with other
  summation orders) and the matmul peaks to `rows`. Returns (issue 9's targets, met or not, per
  rsjax run; for each quality target, whether the rsjax - open_clip difference lies within the
  rounding yardstick)."""
  fws = [fw for fw in FRAMEWORKS if any(r["framework"] == fw for r in rows)]
  means = {fw: _mean_row(rows, fw) for fw in fws}
  if len(rows) > len(fws):
    rows.extend(means.values())
  targets, within = {}, {}
  oc = means.get("open_clip")
  for fw in RSJAX_DEVICES:
    if fw not in means or oc is None:
      continue
    rs = means[fw]
    ratio, diff = _compare(rs, oc)
    rows.extend([ratio, diff] if len(diff) > 2 else [ratio])
    targets.update({
        f"{fw}: train step time <= 1.0x open_clip's": ratio["step_s"] <= 1.0,
        f"{fw}: image encoding images/s >= 1.0x open_clip's": ratio["encode_img_per_s"] >= 1.0,
        f"{fw}: train step >= 50% of the matmul peak": rs["pct_of_peak"] >= 50.0})
    for k in QUALITY:
      if k in rs:
        targets[f"{fw}: {k} not below open_clip's"] = rs[k] >= oc[k]
  if "rsjax" in means and "rsjax_1dev" in means:
    _, rounding = _compare(means["rsjax"], means["rsjax_1dev"])
    rounding["framework"] = "rounding: " + rounding["framework"]
    if len(rounding) > 2:
      rows.append(rounding)
    for fw in RSJAX_DEVICES:
      for k in QUALITY:
        if oc is not None and k in rounding:
          gap = means[fw][k] - oc[k]
          within[f"{fw}: {k} {gap:+.2f} points vs open_clip, rounding moves it "
                 f"{abs(rounding[k]):.2f}"] = gap >= -abs(rounding[k])
  for fw in ("torch", "jax"):
    rows.append({"framework": f"matmul peak ({fw})", "seed": "-", "GFLOP_per_s": peaks[fw] / 1e9,
                 "pct_of_peak": 100.0 * peaks[fw] / max(peaks.values())})
  return targets, within


# ---------------------------------------------------------------------------------------------
# Main.

def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
  parser.add_argument("--quick", action="store_true",
                      help="one seed, 15 steps, no metrics, nothing written: a speed check")
  parser.add_argument("--tiny", action="store_true",
                      help="a two-layer model at 32 px: a path check")
  parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS)
  parser.add_argument("--quiet-wait", type=float, default=20.0,
                      help="minutes to wait in all for a quiet machine before the runs (0: none)")
  parser.add_argument("--data", default=os.path.join(
      os.environ.get("RSJAX_SHARED_DATA", os.path.join(REPO, "..", "shared", "data")), "rsscn7"))
  parser.add_argument("--workdir", default="", help="keep the intermediate files here")
  parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
  parser.add_argument("--spec", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    return worker(args.spec, args.worker)
  if args.quick:
    args.seeds, args.steps = args.seeds[:1], min(args.steps, 15)
  args.image_size = 32 if args.tiny else IMAGE_SIZE
  workdir = args.workdir or tempfile.mkdtemp(prefix="vs_open_clip_")
  os.makedirs(workdir, exist_ok=True)
  try:
    run(args, workdir)
  finally:
    if not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)


def run(args, workdir: str) -> None:
  """The parent: data, weights, peaks and FLOPs, then the workers in turn, then the table."""
  started = time.perf_counter()
  deadline = started + 60 * args.quiet_wait
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  print(f"data: decoding {args.data} at {args.image_size} px", flush=True)
  facts = prepare_data(args.data, os.path.join(workdir, "data.npz"), args.image_size,
                       8 if args.tiny else CONTEXT)
  facts["path"] = os.path.join(workdir, "data.npz")
  specs = {}
  for seed in args.seeds:
    specs[seed], n_params = _prepare_seed(args, workdir, facts, seed)
  with open(specs[args.seeds[0]]) as f:
    spec0 = json.load(f)
  data = np.load(facts["path"])
  first = make_batch(data["train_images"], data["train_labels"], data["prompt_ids"],
                     next(batch_plan(facts["train"], 1, args.batch, len(TEMPLATES), 0)))
  flops = torch_train_flops(spec0["open_clip_config"], dict(np.load(spec0["open_clip_params"])),
                            first)
  print(f"model: {n_params / 1e6:.3f}M parameters in both frameworks; train step "
        f"{flops / 1e9:.1f} GFLOP (torch FlopCounterMode, forward + backward)", flush=True)
  n = 1024 if args.tiny else (2048 if args.quick else 4096)
  wait_quiet(deadline)
  print(f"matmul peak: {n}^3 float32, torch and JAX", flush=True)
  peaks = matmul_peaks(n, 3 if args.quick or args.tiny else 5)

  results = {}
  for seed in args.seeds:  # alternating, so that load from outside falls on both alike
    for fw in args.frameworks:
      wait_quiet(deadline)
      print(f"run: {fw} seed {seed}", flush=True)
      results[fw, seed] = {**_run_worker(specs[seed], fw), "batch": args.batch}
  rows = []
  for (fw, seed), r in results.items():
    if not args.quick:
      r["metrics"] = score(r["val_emb"], r["prompt_emb"], data["val_labels"],
                           len(facts["classes"]))
    rows.append(_row(fw, seed, r, flops, max(peaks.values())))
  targets, within = summarise(rows, peaks)
  minutes = (time.perf_counter() - started) / 60
  xla = [r["xla_flops"] for r in results.values() if "xla_flops" in r]
  meta = {
      "minutes": minutes, "args": {k: v for k, v in vars(args).items()
                                   if k not in ("worker", "spec")},
      "data": {k: v for k, v in facts.items() if k != "path"}, "templates": TEMPLATES,
      "model": {"rsjax": run_config(model_config(facts["vocab_size"], args.tiny), args.image_size,
                                    1, 1, 0).model.to_dict(),
                "open_clip": spec0["open_clip_config"], "params": n_params},
      "train": TRAIN, "weight_decay_on": spec0["decayed"],
      "GLIBC_TUNABLES": worker_environment().get("GLIBC_TUNABLES", ""),
      "flops_per_step": {"used": "torch FlopCounterMode (matmuls, convolutions, attention)",
                         "torch_flop_counter": flops,
                         "xla_cost_analysis": xla[0] if xla else None},
      "matmul_peak_GFLOP_per_s": {k: v / 1e9 for k, v in peaks.items()},
      "runs": {f"{fw} seed {s}": {k: r[k] for k in ("step_times", "losses", "rss_before_mib",
                                                     "peak_rss_mib", "others_cpu_pct")}
               for (fw, s), r in results.items()},
      "cpu": cpu_model(), "targets": targets, "quality_within_rounding": within}
  if args.quick or args.tiny:  # checks print only (results/ keeps the full run's file)
    from common import markdown_table
    json.dumps(meta)  # what a full run would write must serialise
    print(markdown_table(rows))
  else:
    report(rows, __file__, meta)
  for name, ok in targets.items():
    print(f"target {'met   ' if ok else 'MISSED'}: {name}")
  for name, ok in within.items():
    print(f"quality {'not below beyond rounding' if ok else 'BELOW beyond rounding'}: {name}")
  print(f"total {minutes:.1f} min", flush=True)


if __name__ == "__main__":
  main()
