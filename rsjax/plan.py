"""What a training run needs per chip, found before renting the chips.

The train step of a config is compiled ahead of time for a target mesh on fake CPU devices (as many
as the target has chips). Nothing is allocated or run. The figures:

- parameters and optimizer state per device: exact, from their shardings on the target mesh;
- activations and temporaries: the compiled executable's memory analysis. They come from the XLA
  CPU compiler, whose fusion and buffer layout differ from the TPU/GPU compilers', so treat them as
  an estimate of the accelerator's figure. With bf16 compute it is an upper bound: XLA:CPU keeps
  bf16 intermediates in float32 (measured here: a grad of eight 1024-wide bf16 layers on [4096, 1024]
  needs 384 MiB of temporaries, the float32 version 368 MiB), where TPUs and GPUs store bf16;
- FLOPs per step: XLA's cost analysis of the step with its layers unrolled (the analysis counts
  the body of a scanned loop only once), divided evenly over the devices; remat recomputation is
  included, so this is hardware FLOPs. Work that tensor parallelism repeats on every member of the
  tensor axis (norms, the loss) is counted once, so with tensor > 1 the figure is a lower bound;
- step time = FLOPs per device / (MFU x the chip's peak bf16 FLOP/s): a stated assumption, not a
  measurement; communication is not modelled.

Imports of the trainer stay inside functions: `CHIPS` is read by benchmarks/mfu.py, which runs where
the data libraries are not installed.
"""

from __future__ import annotations

import dataclasses
import math

from rsjax.errors import ConfigError, InputError

GIB = 2 ** 30
MIB = 2 ** 20


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  peak_bf16_flops: float  # dense bf16 matmul peak per chip, FLOP/s
  memory_bytes: int       # HBM per chip
  source: str


# Vendor figures per chip (dense, no sparsity). TPU: Cloud TPU system-architecture pages; GPU: NVIDIA
# data sheets (SXM parts; the H100/H200 bf16 figure of 1,979 TFLOP/s is with 2:4 sparsity, halved here).
CHIPS = {
    "v4": Chip("TPU v4", 275e12, 32 * GIB, "cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB HBM2"),
    "v5e": Chip("TPU v5e", 197e12, 16 * GIB, "cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GiB HBM2"),
    "v5p": Chip("TPU v5p", 459e12, 95 * GIB, "cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GiB HBM2e"),
    "v6e": Chip("TPU v6e", 918e12, 32 * GIB, "cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GiB HBM"),
    "h100": Chip("NVIDIA H100 SXM", 989e12, 80 * 10 ** 9,
                 "NVIDIA H100 data sheet: 989 TFLOP/s dense bf16, 80 GB HBM3"),
    "h200": Chip("NVIDIA H200 SXM", 989e12, 141 * 10 ** 9,
                 "NVIDIA H200 data sheet: 989 TFLOP/s dense bf16, 141 GB HBM3e"),
    "a100": Chip("NVIDIA A100 SXM 80GB", 312e12, 80 * 10 ** 9,
                 "NVIDIA A100 data sheet: 312 TFLOP/s dense bf16, 80 GB HBM2e"),
}


def parse_mesh(text: str) -> tuple[int, int, int]:
  """'2,4,1' -> (2, 4, 1) = (data, fsdp, tensor)."""
  try:
    sizes = tuple(int(p) for p in text.split(","))
  except ValueError:
    sizes = ()
  if len(sizes) != 3 or min(sizes) < 1:
    raise InputError(f"--mesh wants three positive sizes DATA,FSDP,TENSOR such as 1,256,1; got {text!r}")
  return sizes


@dataclasses.dataclass
class Plan:
  mesh: tuple[int, int, int]
  chip: str
  mfu: float
  n_params: int
  n_trained: int           # without the parameters train.frozen keeps fixed
  global_batch: int
  grad_accum_steps: int
  params_bytes: int        # per device
  opt_state_bytes: int     # per device
  batch_bytes: int         # per device
  temp_bytes: int          # activations and temporaries, per device (compiler memory analysis)
  argument_bytes: int      # the executable's inputs, per device (memory analysis)
  output_bytes: int
  alias_bytes: int         # outputs written into donated inputs
  flops_per_device: float  # per step
  notes: list[str] = dataclasses.field(default_factory=list)     # advice when it does not fit
  caveats: list[str] = dataclasses.field(default_factory=list)   # how to read the figures

  @property
  def devices(self) -> int:
    return math.prod(self.mesh)

  @property
  def total_bytes(self) -> int:
    """Peak estimate per device: inputs + outputs not aliased to inputs + temporaries."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

  @property
  def step_seconds(self) -> float:
    return self.flops_per_device / (self.mfu * CHIPS[self.chip].peak_bf16_flops)

  @property
  def images_per_second(self) -> float:
    return self.global_batch / self.step_seconds

  @property
  def fits(self) -> bool:
    return self.total_bytes <= CHIPS[self.chip].memory_bytes

  def to_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out.update(devices=self.devices, total_bytes=self.total_bytes, step_seconds=self.step_seconds,
               images_per_second=self.images_per_second, fits=self.fits,
               chip_name=CHIPS[self.chip].name, chip_source=CHIPS[self.chip].source)
    return out


def _device_bytes(tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs / arrays with shardings (the largest
  shard: uneven splits pad to it)."""
  import jax

  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shape) * leaf.dtype.itemsize
  return total


def _abstract_batch(config, mesh):
  import jax
  import jax.numpy as jnp

  from rsjax import parallel

  b, s = config.train.batch_size, config.data.image_size
  sharding = parallel.batch_sharding(mesh)
  return {"image": jax.ShapeDtypeStruct((b, s, s, 3), jnp.uint8, sharding=sharding),
          "tokens": jax.ShapeDtypeStruct((b, config.model.text.context_length), jnp.int32,
                                         sharding=sharding)}


def _lower(config, mesh):
  """(lowered train step, abstract state) for `config` on `mesh`."""
  import jax

  from rsjax import optim, state
  from rsjax.train import step as train_step

  from rsjax import trainable

  model = state.create_model(config)
  tx = optim.make_optimizer(config.train)
  abstract, shardings = state.state_layout(model, tx, config, mesh)
  constants = ()
  if trainable.frozen_patterns(config.train):  # frozen parameters: an input of every step
    every, _ = state.params_layout(model, config, mesh)
    constants = ({"frozen": trainable.Selection.of(config, every).frozen_part(every)},)
  step = train_step.compile_train_step(
      train_step.make_train_step(model, tx, config, mesh), shardings, mesh,
      jax.tree.map(lambda x: x.sharding, constants[0]) if constants else None)
  with jax.set_mesh(mesh):
    lowered = step.lower(abstract, _abstract_batch(config, mesh), *constants)
  return lowered, abstract, constants[0]["frozen"] if constants else {}


def with_mesh(config, mesh: tuple[int, int, int]):
  """A copy of `config` whose mesh section is `mesh` (data, fsdp, tensor).

  A multi-slice split of `data` (mesh.dcn_data) changes which links carry the all-reduce, not what
  each device holds or computes, so the plan lays the fake devices out as one slice."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
    if "dcn_data" in config.mesh:
      config.mesh.dcn_data = 1
  return config


def make_plan(config, mesh: tuple[int, int, int], chip: str, mfu: float = 0.4,
              devices=None) -> tuple[Plan, object]:
  """(Plan, compiled executable) of config's train step on `mesh` of `chip`s.

  `devices`: at least prod(mesh) devices to compile for (default: jax.devices(), which the CLI fills
  with fake CPU devices).
  """
  import jax

  from rsjax import parallel
  from rsjax.train.step import grad_accum_steps

  if chip not in CHIPS:
    raise InputError(f"--chip: unknown chip '{chip}', choose from {sorted(CHIPS)}")
  if not 0 < mfu <= 1:
    raise InputError(f"--mfu (model FLOPs utilisation) must lie in (0, 1], e.g. 0.4; got {mfu}")
  n = math.prod(mesh)
  devices = list(jax.devices() if devices is None else devices)
  if len(devices) < n:
    raise InputError(f"--mesh {','.join(map(str, mesh))} needs {n} devices, {len(devices)} are "
                     "available; give a smaller mesh or more (fake CPU) devices")
  config = with_mesh(config, mesh)
  jax_mesh = parallel.make_mesh(config, devices[:n])
  accum = grad_accum_steps(config)
  parallel.check_batch(config.train.batch_size, jax_mesh, accum)
  _check_divisible(config, mesh)

  lowered, abstract, frozen = _lower(config, jax_mesh)
  compiled = lowered.compile()
  mem = compiled.memory_analysis()
  flops_config = config
  if config.model.scan:  # cost analysis counts a scanned body once: count the unrolled step
    flops_config = config.copy_and_resolve_references()
    flops_config.model.scan = False
    lowered, _, _ = _lower(flops_config, jax_mesh)
  global_flops = float(lowered.cost_analysis()["flops"])

  plan = Plan(
      mesh=tuple(mesh), chip=chip, mfu=mfu,
      n_params=sum(math.prod(x.shape) for x in jax.tree.leaves((abstract.params, frozen))),
      n_trained=sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params)),
      global_batch=config.train.batch_size, grad_accum_steps=accum,
      params_bytes=_device_bytes(abstract.params) + _device_bytes(frozen),
      opt_state_bytes=_device_bytes(abstract.opt_state) + _device_bytes(abstract.step),
      batch_bytes=_device_bytes(_abstract_batch(config, jax_mesh)),
      temp_bytes=mem.temp_size_in_bytes, argument_bytes=mem.argument_size_in_bytes,
      output_bytes=mem.output_size_in_bytes, alias_bytes=mem.alias_size_in_bytes,
      flops_per_device=global_flops / n)
  plan.notes = advice(plan, config)
  if config.model.dtype != "float32":
    plan.caveats.append(f"{config.model.dtype} compute: XLA:CPU keeps such intermediates in "
                        "float32, so activations/temporaries may be up to ~2x lower on the chip")
  if mesh[2] > 1:
    plan.caveats.append("tensor > 1: work repeated across the tensor axis is counted once in "
                        "the FLOPs (a lower bound)")
  return plan, compiled


def _check_divisible(config, mesh) -> None:
  """Tensor parallelism must split the heads and MLP features evenly."""
  tensor = mesh[2]
  for tower in ("image", "text"):
    t = config.model[tower]
    hidden = int(t.width * t.mlp_ratio)
    for key, what, size in ((f"model.{tower}.heads", f"model.{tower}.heads", t.heads),
                            (f"model.{tower}.mlp_ratio", f"{tower} MLP width", hidden)):
      if size % tensor:
        raise ConfigError(f"config key '{key}': {what} ({size}) is not divisible by the tensor "
                          f"axis ({tensor}); choose a tensor size (third --mesh number) that "
                          "divides it")


def advice(plan: Plan, config) -> list[str]:
  """What to change when the plan does not fit the chip (empty when it fits with room)."""
  chip = CHIPS[plan.chip]
  if plan.fits:
    return []
  data, fsdp, tensor = plan.mesh
  state = plan.params_bytes + plan.opt_state_bytes
  over = plan.total_bytes - chip.memory_bytes
  notes = [f"does NOT fit: needs {plan.total_bytes / GIB:.1f} GiB per device, {chip.name} has "
           f"{chip.memory_bytes / GIB:.1f} GiB ({over / GIB:.1f} GiB over)"]
  if data > 1 and state > over:
    moved = (1, data * fsdp, tensor)
    notes.append(f"FSDP: --mesh {','.join(map(str, moved))} splits parameters and optimizer state "
                 f"{data * fsdp} ways instead of {fsdp} (now {state / GIB:.2f} GiB per device)")
  if config.model.remat == "none":
    notes.append("remat: --set model.remat=full recomputes each block's activations in the "
                 "backward pass (about 1/3 more FLOPs, activations cut to one block's)")
  elif config.model.remat != "full":
    notes.append("remat: --set model.remat=full saves nothing inside a block "
                 f"(now '{config.model.remat}')")
  per_device = plan.global_batch // (data * fsdp * plan.grad_accum_steps)
  if per_device > 1:
    notes.append(f"smaller micro-batch: --set train.grad_accum_steps={plan.grad_accum_steps * 2} "
                 f"halves the activations ({per_device} -> {per_device // 2} examples per device "
                 "per micro-batch; contrastive negatives then come from each micro-batch)")
  return notes


def format_plan(plan: Plan, title: str = "") -> str:
  """The table `rsjax plan` prints."""
  chip = CHIPS[plan.chip]
  d, f, t = plan.mesh
  per_device = plan.global_batch // (d * f)
  rows = [
      ("parameters", plan.params_bytes),
      ("optimizer state", plan.opt_state_bytes),
      ("input batch", plan.batch_bytes),
      ("activations + temporaries", plan.temp_bytes),
      ("total (peak estimate)", plan.total_bytes),
  ]
  lines = []
  if title:
    lines.append(title)
  lines += [
      f"mesh data={d} fsdp={f} tensor={t}: {plan.devices} x {chip.name}",
      f"model {plan.n_params / 1e6:.1f}M parameters"
      + (f" ({plan.n_trained / 1e6:.2f}M trained)" if plan.n_trained < plan.n_params else "")
      + f"; global batch {plan.global_batch} "
      f"({per_device} per device, {plan.grad_accum_steps} micro-batch"
      f"{'es' if plan.grad_accum_steps > 1 else ''} per step)",
      "",
      "| per device | MiB | GiB |",
      "|---|---|---|",
  ]
  lines += [f"| {name} | {size / MIB:.1f} | {size / GIB:.2f} |" for name, size in rows]
  used = plan.total_bytes / chip.memory_bytes
  lines += [
      f"| {chip.name} memory | {chip.memory_bytes / MIB:.0f} | {chip.memory_bytes / GIB:.1f} "
      f"({used:.0%} used: {'fits' if plan.fits else 'does NOT fit'}) |",
      "",
      "| per step | value |",
      "|---|---|",
      f"| FLOPs per device | {plan.flops_per_device / 1e12:.2f} TFLOP |",
      f"| FLOPs, all devices | {plan.flops_per_device * plan.devices / 1e15:.3f} PFLOP |",
      f"| predicted step time at {plan.mfu:.0%} MFU | {plan.step_seconds:.3f} s |",
      f"| predicted images/s | {plan.images_per_second:,.0f} "
      f"({plan.images_per_second / plan.devices:,.0f} per chip) |",
      "",
      f"peak: {chip.source}",
      "activations/temporaries: XLA:CPU memory analysis (an estimate of the accelerator's); "
      "FLOPs: XLA cost analysis incl. remat; communication not modelled",
  ]
  lines += [f"note: {caveat}" for caveat in plan.caveats]
  lines += [f"! {note}" for note in plan.notes]
  return "\n".join(lines)
