"""Several JAX processes on this machine, wired as a multi-host run: rehearse before renting one.

`python -m rsjax.local_cluster --processes N [--devices-per-process K] -- train --config ...`
(launch/local.sh --processes N wraps it) starts N `rsjax` processes with a coordinator on
127.0.0.1 at a port free at start-up. Each process gets RSJAX_COORDINATOR_ADDRESS,
RSJAX_NUM_PROCESSES and RSJAX_PROCESS_ID (rsjax/parallel.py: initialize_distributed) and its own
K CPU devices (RSJAX_CPU_DEVICES); JAX's CPU collectives (gloo) carry the all-reduces between the
processes, as the interconnect does between hosts.

Output lines are prefixed with the process index. SIGTERM or SIGINT to the launcher goes to every
process (a pre-emption of the whole job). When a process ends with an error, the launcher names it
and gives the others `grace_s` seconds to stop on their own (their step watchdog,
train.step_timeout_s) before killing them, so nothing is left running; the exit status is the
first failing process's.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _describe(code: int) -> str:
  if code < 0:
    return f"was killed by {signal.Signals(-code).name}"
  return f"exited with status {code}"


def _root_failure(procs) -> int | None:
  """The index of the failed process that most likely caused the others to fail, or None.

  Failures seen in the same poll are not ordered in time: a process killed by a signal is
  preferred, since its peers then fail with PeerLostError (exit 1) within milliseconds."""
  failed = [i for i, p in enumerate(procs) if p.returncode not in (None, 0)]
  signalled = [i for i in failed if procs[i].returncode < 0]
  return (signalled or failed or [None])[0]


class LocalCluster:
  """N `python -m rsjax.cli ARGS` processes of one multi-process run.

  `procs[i]` is process i (tests signal them one by one); `wait()` supervises them to the end."""

  def __init__(self, processes: int, args: list[str], devices_per_process: int | None = None,
               env: dict[str, str] | None = None, log_dir: str | None = None,
               echo: bool = True, grace_s: float = 60.0):
    if processes < 1:
      raise ValueError(f"--processes must be >= 1, got {processes}")
    self.args, self.grace_s, self.echo = list(args), grace_s, echo
    self.address = f"127.0.0.1:{free_port()}"
    self.log_paths: list[str | None] = []
    self.procs: list[subprocess.Popen] = []
    self._threads: list[threading.Thread] = []
    base = dict(os.environ if env is None else env)
    if log_dir:
      os.makedirs(log_dir, exist_ok=True)
    for i in range(processes):
      penv = {**base, "RSJAX_COORDINATOR_ADDRESS": self.address,
              "RSJAX_NUM_PROCESSES": str(processes), "RSJAX_PROCESS_ID": str(i),
              "PYTHONUNBUFFERED": "1"}
      if devices_per_process:  # an explicit XLA device count would override it
        penv["RSJAX_CPU_DEVICES"] = str(devices_per_process)
        penv["XLA_FLAGS"] = " ".join(
            f for f in penv.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count"))
      log_path = os.path.join(log_dir, f"process_{i}.log") if log_dir else None
      self.log_paths.append(log_path)
      log = open(log_path, "w") if log_path else None
      proc = subprocess.Popen([sys.executable, "-m", "rsjax.cli", *self.args], env=penv,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)  # a signal to one is not one to all
      self.procs.append(proc)
      thread = threading.Thread(target=self._pump, args=(i, proc, log), daemon=True)
      thread.start()
      self._threads.append(thread)

  def _pump(self, index: int, proc: subprocess.Popen, log) -> None:
    try:
      for line in proc.stdout:
        if log:
          log.write(line)
          log.flush()
        if self.echo:
          sys.stdout.write(f"[p{index}] {line}")
          sys.stdout.flush()
    finally:
      if log:
        log.close()

  def signal_all(self, signum: int) -> None:
    for proc in self.procs:
      if proc.poll() is None:
        proc.send_signal(signum)

  def kill_all(self) -> None:
    self.signal_all(signal.SIGKILL)
    for proc in self.procs:
      proc.wait()
    for thread in self._threads:
      thread.join(timeout=5)

  def wait(self, timeout_s: float | None = None) -> int:
    """Waits for every process; returns 0 or the first failure's status (negative: a signal).

    After the first failure the others get grace_s seconds, then are killed; past `timeout_s`
    all are killed and TimeoutError is raised."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    first_failure: int | None = None
    failed_at = None
    try:
      while [p.poll() for p in self.procs].count(None):  # polls every one: any() would stop early
        now = time.monotonic()
        if first_failure is None:
          i = _root_failure(self.procs)
          if i is not None:
            first_failure, failed_at = self.procs[i].returncode, now
            print(f"local_cluster: process {i} {_describe(first_failure)}; waiting up to "
                  f"{self.grace_s:g} s for the others to stop", file=sys.stderr, flush=True)
        if failed_at is not None and now - failed_at > self.grace_s:
          print("local_cluster: killing the processes still running", file=sys.stderr,
                flush=True)
          self.kill_all()
        if deadline is not None and now > deadline:
          self.kill_all()
          raise TimeoutError(f"the {len(self.procs)} processes did not finish in {timeout_s} s")
        time.sleep(0.1)
    except BaseException:
      self.kill_all()
      raise
    for thread in self._threads:
      thread.join(timeout=5)
    if first_failure is None:
      i = _root_failure(self.procs)
      first_failure = 0 if i is None else self.procs[i].returncode
    return first_failure

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.kill_all()


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m rsjax.local_cluster",
      description="Run an rsjax command as N processes of one multi-process JAX run on this host.")
  parser.add_argument("--processes", type=int, required=True, help="number of JAX processes")
  parser.add_argument("--devices-per-process", type=int, default=None,
                      help="CPU devices of each process (RSJAX_CPU_DEVICES; default: as set)")
  parser.add_argument("--log-dir", default=None, help="also write process_<i>.log files here")
  parser.add_argument("--grace", type=float, default=60.0,
                      help="seconds the others get to stop after one process fails (60)")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the rsjax arguments")
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the rsjax command after --, e.g. -- train --config configs/smoke.py ...")
  if args.processes < 1:
    parser.error(f"--processes must be >= 1, got {args.processes}")
  cluster = LocalCluster(args.processes, command, args.devices_per_process,
                         log_dir=args.log_dir, grace_s=args.grace)
  forward = lambda signum, frame: cluster.signal_all(signum)
  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)
  code = cluster.wait()
  return code if code >= 0 else 128 - code


if __name__ == "__main__":
  sys.exit(main())
