"""Device mesh, logical-axis sharding rules and multi-host start-up.

The mesh has three named axes: `data` (pure data parallel), `fsdp` (data parallel whose members also
shard parameters and optimizer state, ZeRO-3 style) and `tensor` (model parallel over attention heads
and MLP features). Model code names logical axes only; a rule table maps them onto mesh axes, so
changing `config.mesh` is all it takes to move from one CPU to a pod slice.

Config keys (section `mesh`):
  data, fsdp, tensor  sizes; one may be -1 (all remaining devices). `data` counts every data-parallel
                      replica, across slices too.
  dcn_data            number of slices (TPU multi-slice) or, on GPUs, of process groups joined by
                      the data-centre network; the `data` axis is split as dcn_data x (data / dcn_data)
                      so that only gradient all-reduces cross the slow network. Default 1.
  rules               "fsdp_tp" (default: parameters over fsdp and tensor), "fsdp", "tp" or "dp"
                      (parameters replicated). See RULE_SETS.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
from rsjax.errors import ConfigError

if TYPE_CHECKING:  # ml_collections is not needed at run time (benchmarks/mfu.py runs without it)
  import ml_collections

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the global batch is split over every data-parallel axis

# Axes every rule set shares. Activations [B, L, D] name ("batch", "length", "embed"): the batch
# claims `fsdp` first, so a later `embed -> fsdp` rule leaves activations whole along D (flax skips
# a mesh axis already used) while parameters, which have no batch axis, are split along D.
_COMMON = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("kv", None),
    ("layers", None),  # the stacked-layer axis of scanned encoders stays whole
)
_FSDP = (("embed", "fsdp"),)
_TP = (("mlp", "tensor"), ("heads", "tensor"), ("vocab", "tensor"))

# name -> logical rules. Parameters and optimizer state follow the same rules.
RULE_SETS = {
    "dp": _COMMON,                  # every device holds all parameters
    "fsdp": _COMMON + _FSDP,        # parameters and optimizer state split over fsdp
    "tp": _COMMON + _TP,            # Megatron-style: heads and MLP features split over tensor
    "fsdp_tp": _COMMON + _FSDP + _TP,
}
RULES = RULE_SETS["fsdp_tp"]  # the default; degenerates to pure DP when fsdp = tensor = 1


class MeshError(ConfigError):
  """The requested mesh does not fit the devices or the batch."""


def _mesh_option(config, key: str, default):
  """config.mesh[key], or `default` for configs written before the key existed."""
  return config.mesh[key] if key in config.mesh else default


def rules_for(config: "ml_collections.ConfigDict"):
  """The logical rules named by config.mesh.rules (default fsdp_tp)."""
  name = _mesh_option(config, "rules", "fsdp_tp")
  if name not in RULE_SETS:
    raise MeshError(f"config key 'mesh.rules': unknown rule set '{name}', choose from "
                    f"{sorted(RULE_SETS)}")
  return RULE_SETS[name]


def mesh_shape(config: "ml_collections.ConfigDict", num_devices: int) -> tuple[int, int, int]:
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


def _device_grid(shape: tuple[int, ...], dcn_data: int, devices: list) -> np.ndarray:
  """Devices arranged as `shape`; slices (or processes) along the outer part of `data`."""
  if dcn_data > 1:
    if shape[0] % dcn_data:
      raise MeshError(f"mesh.data ({shape[0]}) is not divisible by mesh.dcn_data ({dcn_data})")
    from jax.experimental import mesh_utils

    ici = (shape[0] // dcn_data, *shape[1:])
    dcn = (dcn_data, 1, 1)
    if hasattr(devices[0], "slice_index"):  # TPU multi-slice
      return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    if jax.process_count() == dcn_data:  # GPU nodes: one process per node is one granule
      return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=True)
    raise MeshError(f"mesh.dcn_data={dcn_data} needs TPU slices or {dcn_data} processes; "
                    f"found {jax.process_count()} process(es) of {devices[0].platform} devices")
  if devices[0].platform == "tpu" and len(devices) == jax.device_count():
    from jax.experimental import mesh_utils

    return mesh_utils.create_device_mesh(shape, devices)  # follows the physical torus
  return np.asarray(devices).reshape(shape)


def make_mesh(config: "ml_collections.ConfigDict", devices=None) -> Mesh:
  """A mesh over all (or the given) devices with Auto axis types (needed by flax logical rules)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(config, len(devices))
  dcn_data = _mesh_option(config, "dcn_data", 1)
  if dcn_data < 1:
    raise MeshError(f"mesh.dcn_data must be >= 1, got {dcn_data}")
  name = _mesh_option(config, "rules", "fsdp_tp")
  rules_for(config)  # fail on an unknown rule set before anything is compiled
  if shape[2] > 1 and "tp" not in name:
    raise MeshError(f"mesh.rules '{name}' shards nothing over the tensor axis, whose "
                    f"{shape[2]} devices would repeat the same work; use mesh.tensor=1 or "
                    "rules tp / fsdp_tp")
  return Mesh(_device_grid(shape, dcn_data, devices), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch(global_batch: int, mesh: Mesh, grad_accum_steps: int = 1) -> None:
  """The global batch must split evenly over processes and, per micro-batch, over data-parallel
  devices (each device then slices its own rows into micro-batches without communication)."""
  dp = data_parallel_size(mesh)
  if global_batch % (dp * grad_accum_steps):
    what = f" x {grad_accum_steps} micro-batches" if grad_accum_steps > 1 else ""
    hint = ""
    if mesh.devices.flat[0].platform == "cpu":  # RSJAX_CPU_DEVICES may have split this host
      hint = "; on a CPU host, RSJAX_CPU_DEVICES=1 runs on a single device (rsjax/host_devices.py)"
    raise MeshError(f"train.batch_size {global_batch} is not divisible by the {dp} data-parallel "
                    f"devices{what} of mesh {dict(mesh.shape)}{hint}")
  if global_batch % jax.process_count():
    raise MeshError(f"train.batch_size {global_batch} is not divisible by the "
                    f"{jax.process_count()} processes")


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data-parallel axes, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_to_sharding(logical_specs, mesh: Mesh, rules=RULES):
  """A pytree of logical PartitionSpecs -> the same tree of NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Places a host-local batch (numpy, leading axis = this process's share) as global arrays."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def shard_whole_batch(batch: dict, mesh: Mesh) -> dict:
  """Places a batch that every process holds whole (evaluation and index inputs) as global
  arrays split over the data-parallel axes; each process fills only its own devices' rows."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_callback(np.shape(v), sharding,
                                          lambda index, v=np.asarray(v): v[index])
          for k, v in batch.items()}


def barrier(name: str) -> None:
  """Waits until every process of a multi-process run has reached `barrier(name)`; no-op alone."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def to_host(x: jax.Array) -> np.ndarray:
  """The whole value of a (possibly multi-process) global array as numpy, on every process."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils  # gathers the other processes' shards

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# --------------------------------------------------------------------------------------------------
# Multi-host start-up
# --------------------------------------------------------------------------------------------------


def _launcher() -> str | None:
  """Which multi-process launcher started us, from its environment (None: a single process)."""
  env = os.environ
  if env.get("RSJAX_COORDINATOR_ADDRESS"):
    return "explicit"
  if env.get("RSJAX_DISTRIBUTED") == "1":  # set by launch/tpu_vm.sh: let JAX detect the cluster
    return "auto"
  if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in env:  # inside `srun`
    return "auto"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "auto"
  return None


def initialize_distributed() -> bool:
  """Calls jax.distributed.initialize() once when a multi-process launcher is present.

  Must run before anything touches the devices. Recognised: SLURM (`srun`), Open MPI, Cloud TPU
  VMs (launch/tpu_vm.sh sets RSJAX_DISTRIBUTED=1; JAX reads the workers from the TPU metadata), and
  an explicit RSJAX_COORDINATOR_ADDRESS=host:port with RSJAX_NUM_PROCESSES and RSJAX_PROCESS_ID.
  Returns whether this process is part of a multi-process run.
  """
  if jax.distributed.is_initialized():
    return True
  launcher = _launcher()
  if launcher is None:
    return False
  if launcher == "explicit":
    try:
      jax.distributed.initialize(os.environ["RSJAX_COORDINATOR_ADDRESS"],
                                 int(os.environ["RSJAX_NUM_PROCESSES"]),
                                 int(os.environ["RSJAX_PROCESS_ID"]))
    except KeyError as e:
      raise MeshError(f"RSJAX_COORDINATOR_ADDRESS is set but environment variable {e} is not") from None
  else:
    jax.distributed.initialize()
  return True
