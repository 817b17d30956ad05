"""The `rsjax` command restarts itself once with glibc's huge-page tunable (rsjax/host_memory.py)."""

import os
import platform
import subprocess
import sys

import pytest

from rsjax import host_memory

ON_GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


@pytest.fixture
def thp(tmp_path):
  def setting(text):
    path = tmp_path / f"enabled_{len(list(tmp_path.iterdir()))}"
    path.write_text(text)
    return str(path)
  return setting


@pytest.mark.skipif(not ON_GLIBC, reason="the tunable exists only on Linux with glibc")
def test_tunable_added_kept_or_left_out(thp):
  madvise, never = thp("always [madvise] never\n"), thp("always madvise [never]\n")
  env = host_memory.environment_with_huge_pages({"PATH": "/bin"}, madvise)
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  # Other tunables stay; one already chosen by the user wins; opting out and THP off do nothing.
  env = host_memory.environment_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                                                madvise)
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert host_memory.environment_with_huge_pages(
      {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, madvise) is None
  assert host_memory.environment_with_huge_pages({"RSJAX_HUGE_PAGES": "0"}, madvise) is None
  assert host_memory.environment_with_huge_pages({}, never) is None
  assert host_memory.environment_with_huge_pages({}, str(thp("x")) + ".missing") is None


def test_restart_keeps_the_command_line_and_happens_once(tmp_path):
  script = tmp_path / "probe.py"
  script.write_text(
      "import os, sys\n"
      "print('start', flush=True)\n"
      "from rsjax import host_memory\n"
      "host_memory.restart_with_huge_pages()\n"
      "print(os.environ.get('GLIBC_TUNABLES', ''), *sys.argv[1:])\n")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "RSJAX_HUGE_PAGES")}
  env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(host_memory.__file__)))
  out = subprocess.run([sys.executable, str(script), "a b", "--c"], env=env, check=True,
                       capture_output=True, text=True).stdout.splitlines()
  restarts = ON_GLIBC and host_memory._thp_available()
  assert out[:-1] == ["start"] * (2 if restarts else 1)
  assert out[-1] == ("glibc.malloc.hugetlb=1 a b --c" if restarts else " a b --c")
