"""Per-device memory of the compiled train step: ring-sharded contrastive loss vs a naive one.

ViT-B/16 CLIP at 224 px, global batch 4096, on a simulated 8-device data-parallel mesh (fake CPU
devices). Nothing runs: the step is lowered and compiled, and the figures are XLA's own memory
analysis of the executable (per device). Both variants use full rematerialisation and scanned
layers so that the loss's share of the memory is visible.

  .venv/bin/python benchmarks/model_memory.py [--batch 4096] [--model ViT-B-16]
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import report  # noqa: E402
from rsjax import optim, parallel  # noqa: E402
from rsjax import state as state_lib  # noqa: E402
from rsjax.train import step as train_step  # noqa: E402
from rsjax.config import load_config  # noqa: E402
from rsjax.models.registry import model_config  # noqa: E402

MIB = 2 ** 20


def compiled_memory(config, mesh) -> dict:
  model = state_lib.create_model(config)
  tx = optim.make_optimizer(config.train)
  abstract, shardings = state_lib.state_layout(model, tx, config, mesh)
  step = train_step.compile_train_step(train_step.make_train_step(model, tx, config, mesh), shardings, mesh)
  b, s, length = config.train.batch_size, config.data.image_size, config.model.text.context_length
  batch_sharding = parallel.batch_sharding(mesh)
  batch = {"image": jax.ShapeDtypeStruct((b, s, s, 3), jnp.uint8, sharding=batch_sharding),
           "tokens": jax.ShapeDtypeStruct((b, length), jnp.int32, sharding=batch_sharding)}
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = step.lower(abstract, batch).compile()
  mem = compiled.memory_analysis()
  return {"temp_MiB": mem.temp_size_in_bytes / MIB, "temp_bytes": mem.temp_size_in_bytes,
          "arguments_MiB": mem.argument_size_in_bytes / MIB,
          "outputs_MiB": mem.output_size_in_bytes / MIB,
          "total_MiB": (mem.temp_size_in_bytes + mem.argument_size_in_bytes
                        + mem.output_size_in_bytes - mem.alias_size_in_bytes) / MIB,
          "compile_s": time.perf_counter() - start}


def loss_only_memory(impl: str, batch: int, embed_dim: int, mesh) -> dict:
  """Memory of value_and_grad of the CLIP loss alone on [batch, embed_dim] sharded embeddings."""
  from jax.sharding import PartitionSpec as P
  from rsjax.losses import clip_softmax_loss, sharded_clip_loss

  if impl == "ring":
    loss = lambda img, txt: sharded_clip_loss(img, txt, jnp.float32(10.0), mesh)
  else:  # every device gathers both sides and builds the whole [B, B] logit matrix
    loss = jax.shard_map(lambda img, txt: clip_softmax_loss(img, txt, jnp.float32(10.0)),
                         mesh=mesh, in_specs=(P(), P()), out_specs=P())
  spec = jax.ShapeDtypeStruct((batch, embed_dim), jnp.float32,
                              sharding=parallel.batch_sharding(mesh))
  with jax.set_mesh(mesh):
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(spec, spec).compile()
  mem = compiled.memory_analysis()
  return {"temp_MiB": mem.temp_size_in_bytes / MIB, "temp_bytes": mem.temp_size_in_bytes}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--model", default="ViT-B-16")
  parser.add_argument("--batch", type=int, default=4096)
  args = parser.parse_args()
  base = load_config("configs/smoke.py")
  model, image_size = model_config(args.model)
  with base.unlocked():
    base.model = model
    base.model.remat = "full"
    base.model.scan = True
    base.data.image_size = image_size
    base.train.batch_size = args.batch
  mesh = parallel.make_mesh(base)
  rows = []
  for impl in ("ring", "all_gather"):
    config = base.copy_and_resolve_references()
    config.train.loss_sharding = impl
    row = {"model": args.model, "global_batch": args.batch, "mesh": "x".join(map(str, mesh.devices.shape)),
           "loss": f"clip ({impl})", **compiled_memory(config, mesh)}
    rows.append(row)
    print(f"compiled {row['loss']} in {row['compile_s']:.0f}s", file=sys.stderr, flush=True)
  embed = base.model.embed_dim
  for impl in ("ring", "all_gather"):
    rows.append({"model": f"loss only, [{args.batch}, {embed}] embeddings", "global_batch": args.batch,
                 "mesh": "x".join(map(str, mesh.devices.shape)), "loss": f"clip ({impl})",
                 **loss_only_memory(impl, args.batch, embed, mesh)})
  for row in rows:
    ring = next(r for r in rows if r["model"] == row["model"] and "ring" in r["loss"])
    row["temp_vs_ring"] = row["temp_MiB"] / ring["temp_MiB"]
  report(rows, __file__, {
      "note": "per-device figures from compiled.memory_analysis(); whole-step rows use "
              "remat=full and scanned layers"})


if __name__ == "__main__":
  main()
