"""Config errors through `rsjax train`: each is refused before anything is compiled, with exit code
2 and one line on stderr that names the key."""

import jax
import pytest

from helpers import SMOKE, cli_sets
from rsjax.cli import main
import rsjax.train.loop  # noqa: F401  imported before jax.jit is patched: modules jit at import time
import rsjax.data.annotated  # noqa: F401

CASES = {
    "unknown key, with a suggestion": (["train.stepz=3"], ["train.stepz", "did you mean", "train.steps"]),
    "wrong type": (["train.batch_size=many"], ["train.batch_size", "int"]),
    "mesh larger than the devices": (["mesh.data=3"], ["mesh", "8"]),
    "batch not divisible by the mesh": (["train.batch_size=12"], ["train.batch_size 12", "8"]),
    "missing data directory": (["data.cache_dir=/nonexistent/rsjax"], None),
    "unknown evaluator, with a suggestion": (["eval.evaluators=('retrieval','labls')"],
                                             ["eval.evaluators", "labls", "did you mean", "labels"]),
    "evaluators without the recalls": (["eval.evaluators=('hashing',)"],
                                       ["eval.evaluators", "must include 'retrieval'"]),
}


def _never_compile(*args, **kwargs):
  raise AssertionError("compiled before refusing the config")


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_error_is_refused_before_compiling_in_one_line(case, tmp_path, capsys, monkeypatch):
  overrides, words = CASES[case]
  if words is None:  # data errors are tried with the annotated-set config and a folder not there
    args = ["train", "--config", SMOKE.replace("smoke.py", "annotated.py") + ":path=/nonexistent/set",
            "--workdir", str(tmp_path)]
    words = ["data.path", "/nonexistent/set", "does not exist"]
  else:
    args = ["train", "--config", SMOKE, "--workdir", str(tmp_path), *cli_sets(*overrides)]
  monkeypatch.setattr(jax, "jit", _never_compile)
  assert main(args) == 2
  err = capsys.readouterr().err
  assert err.startswith("rsjax train: config error:") and err.count("\n") == 1, err
  for word in words:
    assert word in err, (word, err)
