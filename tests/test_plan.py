"""`rsjax plan`: its memory figures are the compiled executable's; its table and advice."""

import json

import jax
import jax.numpy as jnp
import pytest

from helpers import SMOKE, tiny_config
from rsjax import cli, parallel, plan
from rsjax import optim
from rsjax import state as state_lib
from rsjax.train import step as train_step

TINY = [
    "data.image_size=32", "model.embed_dim=16",
    "model.image.width=32", "model.image.depth=2", "model.image.heads=2", "model.image.patch_size=8",
    "model.text.width=32", "model.text.depth=1", "model.text.heads=2", "train.batch_size=16",
]


def _independent_compile(config, devices=8):
  """The train step compiled here, without rsjax.plan."""
  mesh = parallel.make_mesh(config, jax.devices()[:devices])
  model = state_lib.create_model(config)
  tx = optim.make_optimizer(config.train)
  abstract, shardings = state_lib.state_layout(model, tx, config, mesh)
  step = train_step.compile_train_step(train_step.make_train_step(model, tx, config, mesh), shardings, mesh)
  b, s = config.train.batch_size, config.data.image_size
  sharding = parallel.batch_sharding(mesh)
  batch = {"image": jax.ShapeDtypeStruct((b, s, s, 3), jnp.uint8, sharding=sharding),
           "tokens": jax.ShapeDtypeStruct((b, config.model.text.context_length), jnp.int32,
                                          sharding=sharding)}
  with jax.set_mesh(mesh):
    return step.lower(abstract, batch).compile()


def test_plan_memory_is_the_compiled_memory_analysis(tmp_path, capsys):
  """`rsjax plan` on mesh (2, 2, 2): its figures are the memory analysis of the same train step
  compiled independently here, and its table prints them with the chip's stated peak."""
  out = tmp_path / "plan.json"
  overrides = [*TINY, "model.image.depth=2"]
  code = cli.main(["plan", "--config", SMOKE, "--mesh", "2,2,2", "--chip", "h100", "--mfu", "0.5",
                   "--json", str(out), *[a for s in overrides for a in ("--set", s)]])
  assert code == 0
  text = capsys.readouterr().out
  result = json.loads(out.read_text())
  assert result["mesh"] == [2, 2, 2] and result["chip"] == "h100" and result["fits"]

  config = tiny_config(*overrides, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
  mem = _independent_compile(config).memory_analysis()
  assert result["temp_bytes"] == mem.temp_size_in_bytes
  assert result["argument_bytes"] == mem.argument_size_in_bytes
  assert result["total_bytes"] == (mem.argument_size_in_bytes + mem.output_size_in_bytes
                                   - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
  # The parts the plan names add up to the executable's inputs: nothing is missed or counted twice.
  assert (result["params_bytes"] + result["opt_state_bytes"] + result["batch_bytes"]
          == result["argument_bytes"])
  # Parameters are split over fsdp x tensor: far less than a whole float32 copy per device.
  assert result["params_bytes"] < 0.5 * 4 * result["n_params"]
  # Adam keeps two moments per parameter (plus a few counters).
  assert 2 * result["params_bytes"] <= result["opt_state_bytes"] < 2 * result["params_bytes"] + 1024
  assert result["step_seconds"] == pytest.approx(
      result["flops_per_device"] / (0.5 * plan.CHIPS["h100"].peak_bf16_flops))
  assert "NVIDIA H100 SXM" in text and "activations + temporaries" in text
  assert f"| activations + temporaries | {mem.temp_size_in_bytes / 2 ** 20:.1f} |" in text
  assert "989 TFLOP/s" in text  # the peak and its source are stated
  assert result["notes"] == [] and "note: tensor > 1" in text  # fits; says how to read FLOPs


def test_plan_counts_every_scanned_layer():
  """XLA's cost analysis counts a scanned loop body once; the plan counts every layer: on one
  device its FLOPs equal the compiled cost analysis of the same step with the layers unrolled."""
  overrides = ("mesh.data=1", "model.image.depth=3", "model.text.depth=2")
  scanned_plan, scanned = plan.make_plan(tiny_config(*overrides, "model.scan=True"), (1, 1, 1),
                                         "v5p")
  unrolled_flops = _independent_compile(tiny_config(*overrides), 1).cost_analysis()["flops"]
  assert scanned_plan.flops_per_device == pytest.approx(unrolled_flops, rel=0.02)
  assert scanned.cost_analysis()["flops"] < 0.8 * unrolled_flops  # what the plan corrects


def test_plan_command_rejects_a_bad_mesh(capsys):
  assert cli.main(["plan", "--config", SMOKE, "--mesh", "2,x,1"]) == 2
  assert "DATA,FSDP,TENSOR" in capsys.readouterr().err
  code = cli.main(["plan", "--config", SMOKE, "--mesh", "1,1,2", "--set", "model.image.heads=3",
                   "--set", "model.image.width=96"])
  assert code == 2
  assert "model.image.heads (3) is not divisible by the tensor axis (2)" in capsys.readouterr().err


def test_advice_names_fsdp_remat_and_micro_batches():
  over = plan.Plan(mesh=(16, 1, 1), chip="v5e", mfu=0.4, n_params=10 ** 9, n_trained=10 ** 9,
                   global_batch=4096, grad_accum_steps=1, params_bytes=4 * 10 ** 9, opt_state_bytes=8 * 10 ** 9,
                   batch_bytes=10 ** 6, temp_bytes=9 * 2 ** 30, argument_bytes=12 * 10 ** 9,
                   output_bytes=12 * 10 ** 9, alias_bytes=12 * 10 ** 9, flops_per_device=1e15)
  config = tiny_config()
  notes = plan.advice(over, config)
  assert not over.fits
  assert "does NOT fit" in notes[0]
  assert any("--mesh 1,16,1" in n for n in notes)
  assert any("model.remat=full" in n for n in notes)
  assert any("train.grad_accum_steps=2" in n for n in notes)
