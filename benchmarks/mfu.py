"""Model FLOPs utilisation of CLIP training: ViT-B/16 at 224 px, bf16 compute, on whatever is present.

One jitted AdamW step of a CLIP dual encoder (ViT-B/16 image tower, CLIP's 12-layer 512-wide text
tower, softmax CLIP loss over the global batch) is timed after warm-up. Columns:

  step_s, images_per_s      median over --steps timed steps (blocking on each step's output)
  TFLOP_per_step            per device, from XLA's cost analysis of the compiled step (layers are
                            unrolled, since the analysis counts a scanned body once)
  analytic_TFLOP_per_step   per device, 3 x forward matmul FLOPs counted by hand (a cross-check;
                            an attention kernel XLA calls as a custom call is invisible to the
                            cost analysis, and this column shows whether that happened)
  MFU_vs_datasheet          achieved FLOP/s / the device's dense bf16 peak (rsjax.plan.CHIPS,
                            vendor figures; empty where the device is not in the table)
  MFU_vs_matmul             achieved FLOP/s / the best FLOP/s of a large bf16 matmul measured here

Runs without grain, tensorflow-datasets, sentencepiece and ml-collections: the model is built from
rsjax.models modules directly. Usage:

  python benchmarks/mfu.py                     # ViT-B/16, 224 px, batch 256 per device, bf16
  python benchmarks/mfu.py --batch 512 --remat dots
  python benchmarks/mfu.py --quick             # a reduced model on CPU, seconds (checks the path)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import report  # noqa: E402
from rsjax.losses import clip_softmax_loss  # noqa: E402
from rsjax.models.heads import ContrastiveHead, l2_normalize  # noqa: E402
from rsjax.models.text import TextTransformer  # noqa: E402
from rsjax.models.vit import VisionTransformer  # noqa: E402
from rsjax.plan import CHIPS  # noqa: E402

# (image width, depth, heads, patch, resolution, text width, depth, heads, context, vocab, embed)
SIZES = {
    "ViT-B/16": (768, 12, 12, 16, 224, 512, 12, 8, 77, 49408, 512),
    "quick": (128, 2, 2, 16, 64, 128, 2, 2, 16, 1000, 64),  # CPU check of the whole path
}


class Clip(nn.Module):
  """images uint8 [B, H, W, 3], ids [B, L] -> CLIP loss (scalar)."""
  size: tuple
  dtype: jnp.dtype
  remat: str

  @nn.compact
  def __call__(self, images, ids):
    w, d, h, p, _, tw, td, th, ctx, vocab, embed = self.size
    kw = dict(dtype=self.dtype, remat=self.remat, scan=False)
    x = images.astype(self.dtype) / 127.5 - 1.0
    img = VisionTransformer(width=w, depth=d, heads=h, patch_size=p, embed_dim=embed, **kw,
                            name="image")(x)["embedding"]
    txt = TextTransformer(vocab_size=vocab, context_length=ctx, width=tw, depth=td, heads=th,
                          embed_dim=embed, **kw, name="text")(ids)["embedding"]
    img, txt, scale, _ = ContrastiveHead(name="head")(l2_normalize(img), l2_normalize(txt))
    return clip_softmax_loss(img.astype(jnp.float32), txt.astype(jnp.float32), scale)


def analytic_forward_flops(size: tuple, batch: int) -> float:
  """Matmul FLOPs of one forward pass (2 per multiply-add), attention included, norms excluded."""
  w, d, _, p, res, tw, td, _, ctx, _, embed = size
  n = (res // p) ** 2 + 1  # patches + [CLS]

  def tower(tokens, width, depth):  # per layer: QKV, output, MLP (4x) = 24 N D^2; QK^T, AV = 4 N^2 D
    return depth * (24 * tokens * width ** 2 + 4 * tokens ** 2 * width)

  image = 2 * (n - 1) * p * p * 3 * w + tower(n, w, d) + 2 * w * embed
  text = tower(ctx, tw, td) + 2 * tw * embed
  return batch * (image + text) + 2 * batch * batch * embed  # + the [B, B] logits


def matmul_peak(dtype, n: int, repeats: int = 10) -> float:
  """Best FLOP/s of an n x n x n matmul in `dtype` on the first device."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def peak_memory_gib(device) -> float | None:
  """The device allocator's peak bytes in use so far, in GiB (None where it keeps no count: CPU)."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  peak = (stats or {}).get("peak_bytes_in_use")
  return peak / 2**30 if peak else None


def datasheet_chip(device) -> str | None:
  """The rsjax.plan.CHIPS key of a device, from its device_kind (None when not listed)."""
  kind = device.device_kind.lower()
  for needle, key in (("h200", "h200"), ("h100", "h100"), ("a100", "a100"), ("v5 lite", "v5e"),
                      ("v5e", "v5e"), ("v5p", "v5p"), ("v5", "v5p"), ("v6 lite", "v6e"),
                      ("v6e", "v6e"), ("v4", "v4")):
    if needle in kind:
      return key
  return None


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=256, help="images per device per step")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--remat", default="none", help="none | full | dots | dots_no_batch")
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--quick", action="store_true", help="reduced model and batch (CPU check)")
  args = parser.parse_args()
  name = "quick" if args.quick else "ViT-B/16"
  size = SIZES[name]
  batch_per_device = 8 if args.quick else args.batch
  steps = 2 if args.quick else args.steps
  dtype = jnp.dtype(args.dtype)

  devices = jax.devices()
  mesh = Mesh(np.asarray(devices), ("batch",))
  data, replicated = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
  batch = batch_per_device * len(devices)
  res, ctx = size[4], size[8]
  model = Clip(size, dtype, args.remat)
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.integers(0, 256, (batch, res, res, 3), dtype=np.uint8), data)
  ids = jax.device_put(rng.integers(1, size[9], (batch, ctx)).astype(np.int32), data)
  tx = optax.adamw(1e-4, weight_decay=0.1)

  def init(key):
    params = model.init(key, images[:1], ids[:1])["params"]
    return params, tx.init(params)

  params, opt_state = jax.jit(init, out_shardings=replicated)(jax.random.key(0))
  params = nn.meta.unbox(params)
  opt_state = nn.meta.unbox(opt_state)

  def step(params, opt_state, images, ids):
    loss, grads = jax.value_and_grad(lambda p: model.apply({"params": p}, images, ids))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  jitted = jax.jit(step, in_shardings=(replicated, replicated, data, data),
                   out_shardings=(replicated, replicated, replicated), donate_argnums=(0, 1))
  start = time.perf_counter()
  compiled = jitted.lower(params, opt_state, images, ids).compile()
  compile_s = time.perf_counter() - start
  flops = float(compiled.cost_analysis().get("flops", float("nan")))  # per device
  params, opt_state, loss = compiled(params, opt_state, images, ids)
  jax.block_until_ready(loss)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    params, opt_state, loss = compiled(params, opt_state, images, ids)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - t)
  step_s = float(np.median(times))

  peak_dtype = dtype if devices[0].platform != "cpu" else jnp.float32
  measured = matmul_peak(peak_dtype, 1024 if args.quick else 8192)
  chip = datasheet_chip(devices[0])
  datasheet = CHIPS[chip].peak_bf16_flops if chip and dtype == jnp.bfloat16 else None
  analytic = 3 * analytic_forward_flops(size, batch) / len(devices)
  achieved = flops / step_s
  row = {
      "model": name, "device": devices[0].device_kind, "devices": len(devices),
      "dtype": args.dtype, "remat": args.remat, "batch_per_device": batch_per_device,
      "step_s": step_s, "images_per_s": batch / step_s,
      "TFLOP_per_step": flops / 1e12, "analytic_TFLOP_per_step": analytic / 1e12,
      "achieved_TFLOP_per_s": achieved / 1e12,
      "datasheet_peak_TFLOP_per_s": datasheet / 1e12 if datasheet else None,
      "MFU_vs_datasheet": achieved / datasheet if datasheet else None,
      "matmul_peak_TFLOP_per_s": measured / 1e12, "MFU_vs_matmul": achieved / measured,
      "compile_s": compile_s, "final_loss": float(loss),
      "peak_memory_GiB": peak_memory_gib(devices[0]),
  }
  report([row], __file__, {
      "jax": jax.__version__, "peak_source": CHIPS[chip].source if chip else "not in the table",
      "note": "FLOPs per device from compiled.cost_analysis(); MFU = achieved / peak"})


if __name__ == "__main__":
  main()
