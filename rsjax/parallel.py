"""Device mesh and logical-axis sharding rules.

The mesh has three named axes: `data` (pure data parallel), `fsdp` (data parallel whose members also
shard parameters and optimizer state) and `tensor` (model parallel over heads and MLP). Model code names
logical axes only; RULES maps them onto mesh axes, so changing `config.mesh` is all it takes to move
from one CPU to a pod slice.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the global batch is split over every data-parallel axis

# logical name -> mesh axes. `embed` over fsdp shards parameters (ZeRO-3 style) when fsdp > 1 and
# is a no-op when fsdp == 1.
RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("length", None),
    ("layers", None),  # the stacked-layer axis of scanned encoders stays whole
)


class MeshError(ValueError):
  """The requested mesh does not fit the devices or the batch."""


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int, int]:
  """Resolves -1 entries of config.mesh (at most one) to use all devices."""
  sizes = [config.mesh[a] for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise MeshError("at most one of mesh.data / mesh.fsdp / mesh.tensor may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if num_devices % known:
    raise MeshError(f"mesh {dict(zip(MESH_AXES, sizes))} does not divide {num_devices} devices")
  sizes = [num_devices // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != num_devices:
    raise MeshError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                    f"{num_devices} are present")
  return tuple(sizes)


def make_mesh(config: ml_collections.ConfigDict, devices=None) -> Mesh:
  """A mesh over all (or the given) devices with Auto axis types (needed by flax logical rules)."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(config, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch(global_batch: int, mesh: Mesh) -> None:
  """The global batch must split evenly over data-parallel devices and over processes."""
  dp = data_parallel_size(mesh)
  if global_batch % dp:
    raise MeshError(f"train.batch_size {global_batch} is not divisible by the {dp} data-parallel "
                    f"devices of mesh {dict(mesh.shape)}")
  if global_batch % jax.process_count():
    raise MeshError(f"train.batch_size {global_batch} is not divisible by the "
                    f"{jax.process_count()} processes")


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data-parallel axes, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_to_sharding(logical_specs, mesh: Mesh):
  """A pytree of logical PartitionSpecs -> the same tree of NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, RULES)


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Places a host-local batch (numpy, leading axis = this process's share) as global arrays."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
