"""Test setup: 8 fake CPU devices (set before jax is imported) and shared-data discovery."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def shared_data_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("RSJAX_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> pathlib.Path:
  """../shared/data; skips where absent, fails instead under RSJAX_REQUIRE_SHARED_DATA=1 (CI)."""
  path = shared_data_dir()
  if not path.is_dir():
    if os.environ.get("RSJAX_REQUIRE_SHARED_DATA") == "1":
      pytest.fail(f"RSJAX_REQUIRE_SHARED_DATA=1 but the shared data folder {path} is missing")
    pytest.skip(f"shared data folder {path} is absent (set RSJAX_SHARED_DATA to use it)")
  return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
  """Each test session generates RS-Synth into its own cache, never the user's."""
  monkeypatch.setenv("RSJAX_CACHE", str(tmp_path_factory.getbasetemp() / "rsjax_cache"))


@pytest.fixture(scope="session")
def change_run(tmp_path_factory):
  """A tiny change encoder trained 4 steps: (its final results, workdir, the config's overrides)."""
  from change_runs import train_change_run
  return train_change_run(tmp_path_factory.mktemp("change"))


@pytest.fixture(scope="session")
def pair_index(change_run, tmp_path_factory):
  """The change run's index of change_runs.PAIRS before/after pairs: (index, before, after folders)."""
  from change_runs import build_pair_index
  return build_pair_index(change_run, tmp_path_factory.mktemp("pairs"))
