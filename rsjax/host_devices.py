"""Optionally one JAX CPU device per core on a CPU host, so a step's work runs as parallel streams.

XLA:CPU runs one executable's operations mostly one after another and parallelises inside each
(matmuls over the intra-op pool). On small models most operations are too small for that to keep
the cores busy: the ViT-Ti/16 train step of benchmarks/vs_open_clip.py ran only 1.5x faster on 2
cores than on 1 (torch: 1.7x), and a trace showed a single operation running for 70% of the step.
With two CPU devices, the data-parallel mesh gives each device half the batch; the two devices'
executables run side by side on the shared pool (a trace: two operations at once for 64% of the
step) and meet only in the loss's all-gather and the gradient all-reduce, which on one host are
memory copies. Measured on one host: image encoding 1.20x open_clip's with two devices (0.86x
with one), the train step's gain within that machine's noise; on a Zen 5 host, encoding 2.17x
with two devices and 1.80x with one, the same train step (docs/benchmarks.md, vs_open_clip).

Opt-in, because two devices cost a property one device has: a run resumed from a checkpoint ends
within 1e-7 of the uninterrupted run, not bit for bit (tests/test_faults_train.py), and the batch
must split evenly. The `rsjax` command calls `use_cpu_devices()` first thing; RSJAX_CPU_DEVICES=N
asks for N devices (unset or 1: a single device, as plain JAX). An explicit
--xla_force_host_platform_device_count in XLA_FLAGS is left alone. Accelerator hosts are
unaffected: only the CPU backend is split, and the default backend stays the accelerator.
"""

from __future__ import annotations

import os

ENV = "RSJAX_CPU_DEVICES"
ALL_CORES = "cores"  # RSJAX_CPU_DEVICES=cores: one device per usable core


def cpu_device_count(env: dict[str, str], cores: int) -> int | None:
  """Devices to ask for, or None to leave JAX's default (unset, or XLA_FLAGS sets a count).

  Raises ValueError naming ENV on a value that is not a positive integer or "cores"."""
  if "--xla_force_host_platform_device_count" in env.get("XLA_FLAGS", ""):
    return None
  raw = env.get(ENV)
  if raw is None:
    return None
  if raw == ALL_CORES:
    return max(1, cores)
  try:
    n = int(raw)
  except ValueError:
    n = 0
  if n < 1:
    raise ValueError(f"{ENV} must be a positive integer or '{ALL_CORES}', got {raw!r}")
  return n


def usable_cores() -> int:
  """Cores this process may run on (its affinity mask, not the machine's count)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def use_cpu_devices() -> int | None:
  """Sets jax_num_cpu_devices before any backend starts; returns the count set, or None.

  Call before the first JAX computation (importing jax is fine)."""
  n = cpu_device_count(dict(os.environ), usable_cores())
  if n is None:
    return None
  import jax

  jax.config.update("jax_num_cpu_devices", n)
  return n
