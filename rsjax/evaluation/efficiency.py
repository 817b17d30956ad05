"""What a model costs to use: parameters, FLOPs per image and per caption, encoding speed on this
host, bytes per image in an index, and text-query latency. `rsjax eval` writes them to
eval_full.json ("efficiency") and `rsjax report` shows them.

- params: per tower (image, text) and the rest (projections' heads, temperature, hashing heads);
- flops_per_image / flops_per_caption: XLA's cost analysis of the compiled encoders at batch 1
  (multiply-adds count 2; elementwise ops count too), of an unscanned copy of the model, since
  cost analysis counts a scanned layer stack's body once; parameters are abstract, so nothing
  but the graph is compiled;
- images_per_s: encoding a split's images (at most 512, after a warm-up batch) on this host
  ("host": CPU model or device kind, and the device count);
- bytes_per_image: an index row, dense float16 (`rsjax index`'s default) and float32, and the
  binary code (bits / 8);
- query_ms: a text query end to end (tokenised ids -> embedding -> exact top-10 over the split's
  embeddings, dense, and with a hashing head binary), median over 20 queries after a warm-up.
"""

from __future__ import annotations

import math
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from rsjax import search
from rsjax.evaluation.encode import encode_in_batches

SPEED_IMAGES = 512
QUERIES = 20


def count_params(params) -> dict[str, int]:
  """{"image": ..., "text": ..., "other": ..., "total": ...} numbers of parameters."""
  out = {"image": 0, "text": 0, "other": 0}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    top = str(getattr(path[0], "key", path[0]))
    out[top if top in ("image", "text") else "other"] += int(math.prod(np.shape(leaf)))
  out["total"] = sum(out.values())
  return out


def compiled_flops(fn, *args) -> float:
  """FLOPs XLA's cost analysis gives the jitted fn on these (abstract) arguments."""
  return float(jax.jit(fn).lower(*args).cost_analysis()["flops"])


def encoder_flops(model, image: int | tuple[int, ...], context_length: int) -> dict[str, float]:
  """{"flops_per_image", "flops_per_caption"} of the model's encoders at batch 1. image: the side
  of a square RGB image, or one example's shape ([H, W, 3]; a change encoder's date sequence
  [T, H, W, 3], whose FLOPs per image are then per sequence)."""
  if model.config.get("scan"):
    model = model.clone(config=_unscanned(model.config))
  shape = (image, image, 3) if isinstance(image, int) else tuple(image)
  images = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
  ids = jax.ShapeDtypeStruct((1, context_length), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(images.shape),
                                             jnp.ones(ids.shape, jnp.int32)))["params"]
  image = compiled_flops(lambda p, x: model.apply({"params": p}, x, method=model.encode_image),
                         shapes, images)
  text = compiled_flops(lambda p, t: model.apply({"params": p}, t, method=model.encode_text),
                        shapes, ids)
  return {"flops_per_image": image, "flops_per_caption": text}


def _unscanned(config):
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.scan = False
  return config


def host_name() -> str:
  """'AMD EPYC ... (2 cpu devices)' or the accelerator's device kind and count."""
  device = jax.devices()[0]
  kind = device.device_kind
  if device.platform == "cpu":
    try:
      with open("/proc/cpuinfo") as f:
        kind = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
      kind = platform.processor() or kind
  return f"{kind} ({jax.device_count()} {device.platform} devices)"


def _median_ms(fn, repeats: int) -> float:
  fn()  # warm-up: compilation and caches
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(1000 * (time.perf_counter() - start))
  return float(np.median(times))


def measure(ctx) -> dict:
  """The efficiency block of one eval split's model (ctx: an EvalContext)."""
  model, params, mesh, split = ctx.model, ctx.params, ctx.mesh, ctx.split
  out = {"params": count_params(params), "host": host_name(),
         **encoder_flops(model, split.images.shape[1:], split.tokens.shape[1])}
  # The split's own compiled encoders: the evaluation has compiled them already.
  enc = ctx.encodings
  enc_img, enc_txt = enc.image_encoder, enc.text_encoder
  images = split.images[:SPEED_IMAGES]
  with jax.set_mesh(mesh):
    encode_in_batches(enc_img, params, images[: ctx.batch_size], ctx.batch_size, mesh)
    start = time.perf_counter()
    encode_in_batches(enc_img, params, images, ctx.batch_size, mesh)
    out["images_per_s"] = float(len(images) / (time.perf_counter() - start))
  bits = model.config.hashing.bits
  dim = model.config.embed_dim
  out["bytes_per_image"] = {"dense_float16": 2 * dim, "dense_float32": 4 * dim,
                            **({"binary": bits // 8} if bits else {})}
  db = np.asarray(enc.image_emb, np.float16)
  query = split.tokens[:1]

  def dense_query():
    with jax.set_mesh(mesh):
      q = np.asarray(enc_txt(params, jnp.asarray(query)))
    search.dense_topk(db, q, 10, unit_rows=True)

  out["query_ms"] = {"dense": _median_ms(dense_query, QUERIES)}
  if bits:
    words = search.pack_words(np.packbits(enc.image_signs > 0, axis=1))
    hash_txt = enc.hash_text_encoder

    def binary_query():
      with jax.set_mesh(mesh):
        codes = np.asarray(hash_txt(params, jnp.asarray(query)))
      search.hamming_topk(words, search.pack_words(codes), 10, bits)

    out["query_ms"]["binary"] = _median_ms(binary_query, QUERIES)
  out["num_images_searched"] = int(len(db))
  return out


def summary(e: dict) -> str:
  """One log line of the efficiency block."""
  q = e["query_ms"]
  return (f"efficiency on {e['host']}: {e['params']['total'] / 1e6:.2f}M parameters, "
          f"{e['flops_per_image'] / 1e9:.3f} GFLOPs per image, "
          f"{e['flops_per_caption'] / 1e9:.3f} per caption, {e['images_per_s']:.0f} images/s, "
          f"{e['bytes_per_image']['dense_float16']} B per image dense float16"
          + (f", {e['bytes_per_image']['binary']} B binary" if "binary" in e["bytes_per_image"]
             else "")
          + f"; query {q['dense']:.2f} ms dense"
          + (f", {q['binary']:.2f} ms binary" if "binary" in q else "")
          + f" over {e['num_images_searched']} images")
