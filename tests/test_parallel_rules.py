"""Rule sets place parameters as named; mesh options fail clearly; multi-host start-up detection.

Nothing here compiles a train step: layouts come from jax.eval_shape, so these tests take seconds.
"""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from helpers import tiny_config
from rsjax import parallel
from rsjax import optim
from rsjax import state as state_lib


def _fc1_and_embed_specs(*overrides):
  """Partition specs of an MLP kernel [D, 4D] and the token embedding [V, D] under `overrides`."""
  config = tiny_config(*overrides)
  mesh = parallel.make_mesh(config)
  _, shardings = state_lib.state_layout(state_lib.create_model(config),
                                    optim.make_optimizer(config.train), config, mesh)
  mlp = shardings.params["image"]["encoder"]["block0"]["mlp"]["fc1"]["kernel"].spec
  embed = shardings.params["text"]["token_embed"].spec
  return mlp, embed, shardings


@pytest.mark.parametrize("rules, mesh, mlp, embed", [
    ("dp", (8, 1, 1), P(None, None), P(None, None)),
    ("dp", (2, 4, 1), P(None, None), P(None, None)),       # fsdp acts as plain data parallel
    ("fsdp", (2, 4, 1), P("fsdp", None), P(None, "fsdp")),
    ("tp", (4, 1, 2), P(None, "tensor"), P("tensor", None)),
    ("fsdp_tp", (2, 2, 2), P("fsdp", "tensor"), P("tensor", "fsdp")),
])
def test_rule_sets_place_parameters(rules, mesh, mlp, embed):
  d, f, t = mesh
  got_mlp, got_embed, shardings = _fc1_and_embed_specs(
      f"mesh.rules={rules}", f"mesh.data={d}", f"mesh.fsdp={f}", f"mesh.tensor={t}")
  assert got_mlp == mlp and got_embed == embed
  # Optimizer state follows its parameter (ZeRO: Adam moments split like the weights).
  adam = shardings.opt_state[1][0]  # chain(clip, adamw) -> adamw's ScaleByAdamState
  assert adam.mu["image"]["encoder"]["block0"]["mlp"]["fc1"]["kernel"].spec == mlp


def test_mesh_options_fail_clearly():
  with pytest.raises(parallel.MeshError, match="unknown rule set 'zero3'"):
    parallel.make_mesh(tiny_config("mesh.rules=zero3"))
  with pytest.raises(parallel.MeshError, match="shards nothing over the tensor axis"):
    parallel.make_mesh(tiny_config("mesh.rules=dp", "mesh.data=4", "mesh.tensor=2"))
  with pytest.raises(parallel.MeshError, match="needs TPU slices or 2 processes"):
    parallel.make_mesh(tiny_config("mesh.dcn_data=2"))  # one process of CPU devices
  with pytest.raises(parallel.MeshError, match=r"mesh.data \(1\) is not divisible by mesh.dcn_data"):
    parallel.make_mesh(tiny_config("mesh.data=1", "mesh.fsdp=-1", "mesh.dcn_data=2"))


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"SLURM_NTASKS": "1", "SLURM_STEP_ID": "0"}, None),     # a single-task step
    ({"SLURM_NTASKS": "4"}, None),                           # the batch script, outside `srun`
    ({"SLURM_NTASKS": "4", "SLURM_STEP_ID": "0"}, "auto"),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "auto"),
    ({"RSJAX_DISTRIBUTED": "1"}, "auto"),
    ({"RSJAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "RSJAX_NUM_PROCESSES": "2",
      "RSJAX_PROCESS_ID": "1"}, "explicit"),
])
def test_initialize_distributed_only_under_a_launcher(monkeypatch, env, expected):
  for key in ("SLURM_NTASKS", "SLURM_STEP_ID", "OMPI_COMM_WORLD_SIZE", "RSJAX_DISTRIBUTED",
              "RSJAX_COORDINATOR_ADDRESS", "RSJAX_NUM_PROCESSES", "RSJAX_PROCESS_ID"):
    monkeypatch.delenv(key, raising=False)
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(a))
  assert parallel.initialize_distributed() is (expected is not None)
  if expected is None:
    assert calls == []
  elif expected == "auto":
    assert calls == [()]  # JAX detects the cluster itself
  else:
    assert calls == [("10.0.0.1:1234", 2, 1)]


def test_explicit_coordinator_needs_all_variables(monkeypatch):
  monkeypatch.setenv("RSJAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.delenv("RSJAX_NUM_PROCESSES", raising=False)
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: None)
  with pytest.raises(parallel.MeshError, match="RSJAX_NUM_PROCESSES"):
    parallel.initialize_distributed()
