"""The `rsjax` command splits the CPU into one JAX device per core, up to two
(rsjax/host_devices.py), and the data-parallel step gives each device half the batch."""

import os
import subprocess
import sys

import pytest

from rsjax import host_devices

FORCED = "--xla_force_host_platform_device_count=8"


def test_device_count_default_override_and_explicit_flag():
  count = host_devices.cpu_device_count
  assert count({}, cores=2) == 2
  assert count({}, cores=1) == 1
  assert count({}, cores=16) == host_devices.DEFAULT_MAX  # more only when asked for
  assert count({host_devices.ENV: "6"}, cores=2) == 6
  assert count({host_devices.ENV: "1"}, cores=16) == 1
  # A device count the user already gave XLA wins over ours, even beside the variable.
  assert count({"XLA_FLAGS": f"--xla_cpu_use_thunk_runtime=true {FORCED}"}, cores=2) is None
  assert count({"XLA_FLAGS": FORCED, host_devices.ENV: "3"}, cores=2) is None


@pytest.mark.parametrize("bad", ["0", "-2", "two", ""])
def test_bad_count_is_refused_by_name(bad):
  with pytest.raises(ValueError, match=host_devices.ENV):
    host_devices.cpu_device_count({host_devices.ENV: bad}, cores=2)


def _clean_env(**extra):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", host_devices.ENV)}
  return {**env, "RSJAX_HUGE_PAGES": "0", "JAX_PLATFORMS": "cpu", **extra}


def test_split_takes_effect_in_a_fresh_process():
  code = ("from rsjax import host_devices; n = host_devices.use_cpu_devices(); import jax; "
          "print(n, jax.device_count(), jax.devices()[0].platform)")
  out = subprocess.run([sys.executable, "-c", code], env=_clean_env(**{host_devices.ENV: "3"}),
                       capture_output=True, text=True, timeout=120, check=True).stdout.split()
  assert out == ["3", "3", "cpu"]


def test_command_refuses_a_bad_count_before_running():
  code = "import sys; from rsjax import cli; sys.argv = ['rsjax', '--help']; sys.exit(cli.main())"
  proc = subprocess.run([sys.executable, "-c", code], env=_clean_env(**{host_devices.ENV: "x"}),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert f"{host_devices.ENV} must be a positive integer, got 'x'" in proc.stderr
