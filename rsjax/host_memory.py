"""Transparent huge pages for XLA:CPU's per-step buffers (glibc's `glibc.malloc.hugetlb=1`).

XLA:CPU allocates all temporaries of one executable run at once (about 1.1 GB for the ViT-Ti/16
train step of benchmarks/vs_open_clip.py) with posix_memalign. glibc serves a block that large
from a fresh mmap and unmaps it again on free, so every step first-touches some 270,000 new
4 KiB pages: about 300,000 page faults and half a second of kernel time per 1.3 s step on this
2-core CPU. With the tunable, glibc advises transparent huge pages on the memory it maps, and the
same step takes under 1,000 faults (benchmarks/host_memory.py measures both side by side).

glibc reads tunables once, at process start, so the `rsjax` command starts itself again once with
the tunable added to GLIBC_TUNABLES, before anything else is imported. Set RSJAX_HUGE_PAGES=0 to
leave the allocator alone. Nothing happens off Linux/glibc or where THP is switched off.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "RSJAX_HUGE_PAGES"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _thp_available(setting_path: str = THP_SETTING) -> bool:
  """True where the kernel offers transparent huge pages ("always" or "madvise" selected)."""
  try:
    with open(setting_path) as f:
      return "[never]" not in f.read()
  except OSError:
    return False


def environment_with_huge_pages(env: dict[str, str],
                                setting_path: str = THP_SETTING) -> dict[str, str] | None:
  """A copy of `env` with TUNABLE added to GLIBC_TUNABLES, or None where there is nothing to do
  (already set, opted out, not glibc on Linux, THP off)."""
  if env.get(OPT_OUT, "1") == "0":
    return None
  if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
    return None
  tunables = env.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb=" in tunables or not _thp_available(setting_path):
    return None
  return {**env, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE}


def restart_with_huge_pages() -> None:
  """Replaces this process by the same command line with TUNABLE set; returns where nothing needs
  doing. Call first thing in a program's entry point, before jax is imported."""
  env = environment_with_huge_pages(dict(os.environ))
  if env is None:
    return
  # The tunable's own check: a second start sees it set and returns above, never loops.
  argv = [sys.executable, *sys.orig_argv[1:]]
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, argv, env)
