"""Real multi-process runs: 2 JAX processes on this host (gloo collectives), against one process.

Each run is a `rsjax` command started by rsjax/local_cluster.py: a coordinator on a free port of
127.0.0.1, one CPU device per process. The single-process references run in this test process
on 2 of its fake CPU devices, so the mesh (data=2) and the global batch are the same. Every
process a test starts is killed at its end, finished or not.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO
from helpers import SMOKE, cli_sets, tiny_config
from rsjax.checkpoint import _path_name
from rsjax.local_cluster import LocalCluster
from rsjax.train.loop import train

# No step-0 evaluation: the runs are about the steps, the checkpoints and the stops.
COMMON = ("eval.at_step0=False", "train.checkpoint_every=3")
LONG = ("train.steps=40", "train.log_every=1", "train.checkpoint_every=2")

# Installed in processes other than 0: records every file they open for writing under
# $WATCH_ROOT outside checkpoints/ (orbax writes its shards from every process, by design).
_AUDIT = '''
import os, sys
if os.environ.get("RSJAX_PROCESS_ID", "0") != "0" and os.environ.get("WATCH_ROOT"):
  _root, _log, _busy = os.environ["WATCH_ROOT"], os.environ["WRITES_LOG"], [False]
  def _hook(event, args):
    if event != "open" or _busy[0] or not isinstance(args[0], (str, bytes, os.PathLike)):
      return
    mode, flags = args[1] or "", args[2] or 0
    if not (set(mode) & set("wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
      return
    path = os.path.abspath(os.fsdecode(args[0]))
    if path.startswith(_root) and "/checkpoints/" not in path:
      _busy[0] = True
      with open(_log, "a") as f:
        f.write(path + "\\n")
      _busy[0] = False
  sys.addaudithook(_hook)
'''


def _cache(tmp_path_factory) -> str:
  """The session's RS-Synth cache (as conftest's per-test fixture sets it), for module fixtures."""
  return str(tmp_path_factory.getbasetemp() / "rsjax_cache")


def _env(tmp: pathlib.Path, watch_root: pathlib.Path | None = None) -> dict:
  site = tmp / "site"
  site.mkdir(exist_ok=True)
  (site / "sitecustomize.py").write_text(_AUDIT)
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
  env.setdefault("RSJAX_CACHE", str(pathlib.Path(tmp).parent / "rsjax_cache"))
  if watch_root is not None:
    env.update(WATCH_ROOT=str(watch_root), WRITES_LOG=str(tmp / "writes.log"))
  return env


def _cluster(tmp, workdir, *overrides, command="train", watch=False, **kwargs) -> LocalCluster:
  """`rsjax COMMAND` as 2 processes; overrides: 'key=value' sets, or flags starting with '--'."""
  flags = [x for x in overrides if x.startswith("--")]
  sets = [x for x in overrides if not x.startswith("--")]
  args = [command, "--config", SMOKE, "--workdir", str(workdir), *flags,
          *cli_sets(*COMMON, *sets)]
  return LocalCluster(2, args, devices_per_process=1, env=_env(tmp, workdir if watch else None),
                      log_dir=str(tmp / f"logs-{workdir.name}"), echo=False, **kwargs)


def _run(tmp, workdir, *overrides, **kwargs) -> LocalCluster:
  cluster = _cluster(tmp, workdir, *overrides, **kwargs)
  code = cluster.wait(timeout_s=300)
  assert code == 0, _logs(cluster)
  return cluster


def _logs(cluster: LocalCluster) -> str:
  return "\n".join(f"--- process {i}\n" + pathlib.Path(p).read_text()[-3000:]
                   for i, p in enumerate(cluster.log_paths))


def _reference(workdir, *overrides) -> dict:
  """The same run in this process on 2 devices."""
  return train(tiny_config(*COMMON, *overrides), str(workdir), devices=jax.devices()[:2])


def _state(workdir, step) -> dict:
  """The saved train state as {path: numpy}, read onto one device whatever wrote it."""
  path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  ckptr = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        ckptr.metadata(path).item_metadata)
  tree = ckptr.restore(path, target)
  return {_path_name(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _assert_close(a: dict, b: dict, tol=2e-5):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=tol, atol=tol, err_msg=k)


def _losses(workdir) -> dict[int, float]:
  rows = [json.loads(line) for line in open(pathlib.Path(workdir) / "metrics.jsonl")]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _steps(workdir) -> list[int]:
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
                if p.name.isdigit())


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  """A 6-step run as 2 processes, and the same run in one."""
  tmp = tmp_path_factory.mktemp("mp")
  one, two = tmp / "one", tmp / "two"
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("RSJAX_CACHE", _cache(tmp_path_factory))
    reference = _reference(one)
    cluster = _run(tmp, two, watch=True)
  return tmp, one, two, reference, cluster


def test_two_processes_train_as_one(pair):
  tmp, one, two, reference, cluster = pair
  ones, twos = _losses(one), _losses(two)
  assert sorted(twos) == list(range(1, 7))
  np.testing.assert_allclose([twos[s] for s in sorted(twos)], [ones[s] for s in sorted(twos)],
                             rtol=1e-5)
  assert _steps(two) == _steps(one) == [3, 6]
  _assert_close(_state(two, 6), _state(one, 6))
  evaluated = json.loads((two / "eval.json").read_text())
  assert abs(evaluated["mR"] - reference["mR"]) < 1e-3
  log0 = pathlib.Path(cluster.log_paths[0]).read_text()
  assert "mesh {'data': 2, 'fsdp': 1, 'tensor': 1} over 2 cpu device(s)" in log0
  # Process 1 trained the same steps with process 0's tokenizer and wrote nothing outside its
  # checkpoint shards: eval.json, metrics.jsonl and tokenizer.model are process 0's.
  writes = tmp / "writes.log"
  assert not writes.exists(), writes.read_text()
  assert pathlib.Path(cluster.log_paths[1]).read_text().count("step") == 0  # logs: process 0


def test_the_audit_hook_sees_a_write(tmp_path):
  """The check above cannot pass vacuously: the hook records a write by a process other than 0."""
  env = _env(tmp_path, tmp_path) | {"RSJAX_PROCESS_ID": "1"}
  subprocess.run([sys.executable, "-c", f"open({str(tmp_path / 'x.txt')!r}, 'w').write('1')"],
                 env=env, check=True)
  assert (tmp_path / "writes.log").read_text().split() == [str(tmp_path / "x.txt")]


def test_checkpoints_move_between_process_counts(pair):
  """Two processes' step-3 checkpoint finished by one, and one's finished by four processes
  (through launch/local.sh): both land on the uninterrupted run's step-6 parameters."""
  tmp, one, two, _, _ = pair
  for source, target in ((two, tmp / "two_then_one"), (one, tmp / "one_then_four")):
    (target / "checkpoints").mkdir(parents=True)
    shutil.copytree(source / "checkpoints" / "3", target / "checkpoints" / "3")
    shutil.copy(source / "tokenizer.model", target / "tokenizer.model")
  _reference(tmp / "two_then_one")
  four = tmp / "one_then_four"
  done = subprocess.run([str(REPO / "launch" / "local.sh"), "--processes", "4",
                         "--devices-per-process", "1", SMOKE, str(four),
                         *cli_sets(*COMMON)], env=_env(tmp), capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  assert "[p0] " in done.stdout and "mesh {'data': 4," in done.stdout
  assert "resumed from checkpoint at step 3" in (four / "logs" / "process_0.log").read_text()
  for target in (tmp / "two_then_one", four):
    assert _steps(target) == [3, 6]
    _assert_close(_state(target, 6), _state(one, 6))


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("mp_long") / "ref"
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("RSJAX_CACHE", _cache(tmp_path_factory))
    _reference(workdir, *LONG)
  return workdir


def _wait_for_step(workdir, step, cluster, timeout_s=120):
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    metrics = workdir / "metrics.jsonl"
    if metrics.exists() and any(json.loads(x).get("step", 0) >= step
                                for x in metrics.read_text().splitlines()):
      return
    assert all(p.poll() is None for p in cluster.procs), _logs(cluster)
    time.sleep(0.1)
  raise AssertionError(f"step {step} not reached in {timeout_s} s\n{_logs(cluster)}")


def test_sigterm_to_one_process_stops_both_at_the_same_checkpoint(tmp_path):
  workdir = tmp_path / "run"
  with _cluster(tmp_path, workdir, *LONG, "train.checkpoint_every=1000") as cluster:
    _wait_for_step(workdir, 3, cluster)
    cluster.procs[1].send_signal(signal.SIGTERM)  # the notice reaches one host only
    assert cluster.wait(timeout_s=120) == 0, _logs(cluster)
  (stopped,) = _steps(workdir)
  assert 3 <= stopped < 40
  assert (f"another process received SIGTERM: checkpoint written at step {stopped}; exiting"
          in pathlib.Path(cluster.log_paths[0]).read_text())
  # That checkpoint reads back whole from both processes' shards (resuming from one is the
  # SIGKILL test's), and is of the step it is named after.
  saved = _state(workdir, stopped)
  assert int(saved["step"]) == stopped, sorted(saved)


def test_sigkill_of_one_process_stops_the_other_with_an_error_and_the_restart_resumes(
    tmp_path, long_reference):
  workdir = tmp_path / "run"
  with _cluster(tmp_path, workdir, *LONG, "train.step_timeout_s=10", grace_s=120) as cluster:
    _wait_for_step(workdir, 5, cluster)
    cluster.procs[1].kill()
    killed = time.monotonic()
    code = cluster.wait(timeout_s=120)
    waited = time.monotonic() - killed
  assert code == -signal.SIGKILL  # the first failure is the killed process
  # The survivor stopped well before JAX's 100 s heartbeat timeout would have aborted it: either
  # its next all-reduce failed (gloo: connection reset), or it hung there until its watchdog
  # (a child process) killed it after train.step_timeout_s.
  log0 = pathlib.Path(cluster.log_paths[0]).read_text()
  assert waited < 60, (waited, _logs(cluster))
  if cluster.procs[0].returncode == 1:
    assert "a collective between the 2 processes failed, so another process has probably died" \
        in log0, _logs(cluster)
  else:
    assert cluster.procs[0].returncode == -signal.SIGKILL, _logs(cluster)
    assert "did not finish within 10 s (process 0 of 2: another process has probably died" in log0
  assert "Traceback" not in log0 and "Terminating process" not in log0
  assert "internal error" not in log0
  last = _steps(workdir)[-1]
  assert 2 <= last < 40
  _run(tmp_path, workdir, *LONG)
  assert _steps(workdir)[-1] == 40
  _assert_close(_state(workdir, 40), _state(long_reference, 40))


def test_multi_process_eval_gives_the_single_process_metrics(pair):
  tmp, one, two, _, _ = pair
  from rsjax.cli import main

  assert main(["eval", "--config", SMOKE, "--workdir", str(one), "--splits", "test",
               *cli_sets(*COMMON)]) == 0
  _run(tmp, two, "--splits=test", command="eval", watch=True)
  got = json.loads((two / "eval_full.json").read_text())["splits"]["test"]["retrieval"]
  want = json.loads((one / "eval_full.json").read_text())["splits"]["test"]["retrieval"]
  assert got.keys() == want.keys() and "mR" in got
  for key, value in want.items():
    assert abs(got[key] - value) < 1e-3, key
  assert not (tmp / "writes.log").exists(), (tmp / "writes.log").read_text()


@pytest.mark.parametrize("workers", [0, 2])
def test_every_record_of_a_global_batch_is_read_by_exactly_one_process(workers):
  """The processes' shares of each step's global batch are disjoint and together are exactly
  the batch one process reads, across an epoch boundary, with and without grain workers."""
  from rsjax.data import pipeline

  n, global_batch, steps = 40, 8, 7  # 5 steps per epoch
  images = np.repeat(np.arange(n, dtype=np.uint8), 4 * 4 * 3).reshape(n, 4, 4, 3)
  tokens = np.zeros((n, 1, 5), np.int32)

  def ids(process_index, count):
    ds = pipeline.train_dataset(images, tokens, global_batch // count, 7, process_index, count)
    it = pipeline.iterate(ds, num_workers=workers, prefetch=2)
    return [next(it)["image"][:, 0, 0, 0].tolist() for _ in range(steps)]

  whole = ids(0, 1)
  shares = [ids(p, 2) for p in range(2)]
  for step in range(steps):
    a, b = shares[0][step], shares[1][step]
    assert len(a) == len(b) == global_batch // 2 and not set(a) & set(b)
    assert sorted(a + b) == sorted(whole[step]) and len(set(whole[step])) == global_batch
  epoch = [i for step in whole[:5] for i in step]
  assert sorted(epoch) == list(range(n))  # an epoch reads every record once


def test_multi_process_index_equals_the_single_process_one(pair):
  """`rsjax index` across 2 processes writes (from process 0 alone) the index one process
  writes: the same images in the same order, the same vectors."""
  from PIL import Image

  from rsjax import index
  from rsjax.cli import main

  tmp, one, _, _, _ = pair
  images = tmp / "archive"
  images.mkdir()
  rng = np.random.default_rng(0)
  for i in range(10):
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / f"{i}.png")
  base = ["index", "--config", SMOKE, "--checkpoint", str(one), "--images", str(images),
          "--chunk-size", "4", "--batch-size", "4", "--quiet", *cli_sets(*COMMON)]
  assert main([*base, "--out", str(tmp / "index_one")]) == 0
  out = tmp / "index_two"
  cluster = LocalCluster(2, [*base, "--out", str(out)], devices_per_process=1,
                         env=_env(tmp, out), log_dir=str(tmp / "logs-index"), echo=False)
  assert cluster.wait(timeout_s=300) == 0, _logs(cluster)
  want, got = index.load(str(tmp / "index_one")), index.load(str(out))
  assert got.paths == want.paths and len(got.paths) == 10
  np.testing.assert_allclose(np.asarray(got.dense, np.float32), np.asarray(want.dense, np.float32),
                             atol=2e-3)  # float16 storage
  assert not (tmp / "writes.log").exists(), (tmp / "writes.log").read_text()
