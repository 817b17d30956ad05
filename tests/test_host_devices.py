"""RSJAX_CPU_DEVICES splits the CPU into several JAX devices for the `rsjax` command
(rsjax/host_devices.py); unset, JAX's single CPU device stays."""

import os
import subprocess
import sys

import pytest

from rsjax import host_devices

FORCED = "--xla_force_host_platform_device_count=8"


def test_device_count_default_override_and_explicit_flag():
  count = host_devices.cpu_device_count
  assert count({}, cores=2) is None  # opt-in: unset leaves JAX's one device
  assert count({host_devices.ENV: "cores"}, cores=16) == 16
  assert count({host_devices.ENV: "6"}, cores=2) == 6
  assert count({host_devices.ENV: "1"}, cores=16) == 1
  # A device count the user already gave XLA wins over ours, even beside the variable.
  assert count({"XLA_FLAGS": f"--xla_cpu_use_thunk_runtime=true {FORCED}"}, cores=2) is None
  assert count({"XLA_FLAGS": FORCED, host_devices.ENV: "3"}, cores=2) is None
  assert count({"XLA_FLAGS": FORCED, host_devices.ENV: "cores"}, cores=2) is None


@pytest.mark.parametrize("bad", ["0", "-2", "two", "", "Cores"])
def test_bad_count_is_refused_by_name(bad):
  with pytest.raises(ValueError, match=host_devices.ENV):
    host_devices.cpu_device_count({host_devices.ENV: bad}, cores=2)


def _clean_env(**extra):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", host_devices.ENV)}
  return {**env, "RSJAX_HUGE_PAGES": "0", "JAX_PLATFORMS": "cpu", **extra}


def test_split_takes_effect_in_a_fresh_process_and_only_when_asked():
  code = ("from rsjax import host_devices; n = host_devices.use_cpu_devices(); import jax; "
          "print(n, jax.device_count(), jax.devices()[0].platform)")
  out = subprocess.run([sys.executable, "-c", code], env=_clean_env(**{host_devices.ENV: "3"}),
                       capture_output=True, text=True, timeout=120, check=True).stdout.split()
  assert out == ["3", "3", "cpu"]
  out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True,
                       text=True, timeout=120, check=True).stdout.split()
  assert out == ["None", "1", "cpu"]


def test_command_refuses_a_bad_count_before_running():
  code = "import sys; from rsjax import cli; sys.argv = ['rsjax', '--help']; sys.exit(cli.main())"
  proc = subprocess.run([sys.executable, "-c", code], env=_clean_env(**{host_devices.ENV: "x"}),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert f"{host_devices.ENV} must be a positive integer or 'cores', got 'x'" in proc.stderr
