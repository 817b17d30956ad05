"""Transfer from a trained model: init.checkpoint from a run's workdir, frozen parameters
(train.frozen) without optimizer state, checkpoints of the trained part plus a base reference, and
distillation from a teacher."""

import os
import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_config
from rsjax import optim, parallel, runs, state as state_lib, trainable
from rsjax.checkpoint import CheckpointMismatchError, Checkpointer
from rsjax.config import ConfigError, load_config
from rsjax.losses import distillation_loss
from rsjax.train import loop as train_loop

REPO = pathlib.Path(__file__).resolve().parents[1]


def _flat(tree) -> dict:
  return flax.traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def _checkpoint_state(config, workdir):
  mesh = parallel.make_mesh(config)
  model = state_lib.create_model(config)
  abstract, _ = state_lib.state_layout(model, optim.make_optimizer(config.train), config, mesh)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    return ckpt.restore(ckpt.latest_step(), abstract)
  finally:
    ckpt.close()


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
  """A trained tiny run: the starting point of the transfer tests."""
  workdir = str(tmp_path_factory.mktemp("source"))
  config = tiny_config("train.steps=4", "eval.at_step0=False")
  train_loop.train(config, workdir)
  _, params, _ = runs.load_model(config, workdir, parallel.make_mesh(config))
  return workdir, _flat(params)


def test_every_config_accepts_the_transfer_keys():
  """init.checkpoint, train.frozen and distill.* exist in every config, whatever it sets itself."""
  for path in sorted((REPO / "configs").glob("*.py")):
    if path.name.endswith("_common.py"):
      continue
    arg = ":arch=ViT-B-32" if path.name.startswith("finetune_clip") else ""
    config = load_config(f"{path}{arg}", ["init.checkpoint=/x", "train.frozen=('text_tower',)",
                                          "distill.weight=0.5"])
    assert (config.init.checkpoint, config.train.frozen, config.distill.weight) == (
        "/x", ("text_tower",), 0.5), path.name


def test_init_from_a_run_workdir_starts_from_its_weights(source_run, tmp_path):
  workdir, reference = source_run
  config = tiny_config(f"init.checkpoint={workdir}")
  mesh = parallel.make_mesh(config)
  params = runs.starting_params(config, state_lib.create_model(config), mesh, log=lambda *_: None)
  flat = _flat(params)
  assert flat.keys() == reference.keys()
  for key, value in flat.items():
    np.testing.assert_array_equal(value, reference[key], err_msg=key)
  runs.adopt_tokenizer(config, str(tmp_path), log=lambda *_: None)
  assert (tmp_path / "tokenizer.model").read_bytes() == (
      pathlib.Path(workdir) / "tokenizer.model").read_bytes()


def test_init_from_a_run_refuses_another_architecture(source_run):
  workdir, _ = source_run
  config = tiny_config(f"init.checkpoint={workdir}", "model.text.width=64")
  with pytest.raises(Exception, match="model.text.width: checkpoint 32, config 64"):
    runs.starting_params(config, state_lib.create_model(config), parallel.make_mesh(config),
                         log=lambda *_: None)


def test_a_missing_init_checkpoint_is_a_config_error(tmp_path):
  config = tiny_config(f"init.checkpoint={tmp_path / 'nowhere'}")
  with pytest.raises(ConfigError, match="'init.checkpoint': .*nowhere does not exist"):
    runs.starting_params(config, state_lib.create_model(config), parallel.make_mesh(config))


def test_frozen_patterns_are_checked():
  params = {"image": {"a": {"kernel": 0}}, "text": {"b": {"kernel": 0}}, "head": {"logit_scale": 0}}
  with pytest.raises(ConfigError, match="'imgae/\\*' matches no parameter"):
    trainable.Selection(("imgae/*",), sorted(trainable.path_name(k) for k in
                                             flax.traverse_util.flatten_dict(params)))
  paths = ["image/a/kernel", "text/b/kernel", "head/logit_scale"]
  with pytest.raises(ConfigError, match="every parameter is frozen"):
    trainable.Selection(("image_tower", "text_tower", "head/*"), paths)
  selection = trainable.Selection(("base",), paths)
  assert selection.frozen == {"image/a/kernel", "text/b/kernel"}  # the temperature trains
  trained, frozen = selection.split(params)
  assert trained == {"head": {"logit_scale": 0}}
  assert trainable.join(trained, frozen) == params


FROZEN = {  # recipe -> its config overrides
    "lock_image": ("train.frozen=('image_tower',)",),
    "lora": ("model.lora.rank=4", "model.lora.targets=('qkv', 'out', 'fc1', 'fc2')",
             "train.frozen=('base',)"),
    "adapter": ("model.adapter.dim=8", "train.frozen=('base',)"),
}


@pytest.fixture(scope="module", params=sorted(FROZEN))
def frozen_run(request, source_run, tmp_path_factory):
  """The source run fine-tuned with a part of it frozen."""
  workdir = str(tmp_path_factory.mktemp(request.param))
  source, _ = source_run
  config = tiny_config(f"init.checkpoint={source}", *FROZEN[request.param], "train.steps=4",
                       "train.checkpoint_every=2", "train.learning_rate=0.01",
                       "eval.at_step0=False")
  train_loop.train(config, workdir)
  return config, workdir


def test_frozen_parameters_are_bit_identical_and_have_no_optimizer_state(source_run, frozen_run):
  _, reference = source_run
  config, workdir = frozen_run
  state = _checkpoint_state(config, workdir)
  trained = _flat(state.params)
  _, params, _ = runs.load_model(config, workdir, parallel.make_mesh(config), log=lambda *_: None)
  flat = _flat(params)
  frozen = trainable.Selection.of(config, params).frozen
  assert frozen and trained and not frozen & trained.keys()  # the checkpoint holds the rest only
  assert frozen | trained.keys() == flat.keys()
  # Adam's two moments exist for the trained parameters only (beside a few step counters).
  size = lambda tree: sum(np.size(x) for x in jax.tree.leaves(tree))
  assert 2 * size(trained) <= size(state.opt_state) <= 2 * size(trained) + 8
  for key in frozen:
    assert flat[key].tobytes() == reference[key].tobytes(), key  # bit for bit
  changed = [k for k in trained if k not in reference or not np.array_equal(flat[k], reference[k])]
  assert changed, "nothing trained"


@pytest.mark.parametrize("frozen_run", ["lora"], indirect=True)  # as the others: one mechanism
def test_a_frozen_run_resumes_exactly(frozen_run, tmp_path):
  config, straight = frozen_run
  resumed = str(tmp_path / "resumed")
  with pytest.raises(RuntimeError, match="simulated crash after step 3"):
    train_loop.train(config, resumed, crash_after_step=3)
  train_loop.train(config, resumed)
  a, b = _checkpoint_state(config, straight), _checkpoint_state(config, resumed)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("frozen_run", ["lora"], indirect=True)
def test_a_frozen_run_refuses_a_base_whose_digest_differs(frozen_run, tmp_path):
  config, workdir = frozen_run
  other = str(tmp_path / "other")  # another source: other weights under the same architecture
  train_loop.train(tiny_config("train.steps=2", "train.seed=7", "eval.at_step0=False"), other)
  moved = config.copy_and_resolve_references()
  with moved.unlocked():
    moved.init.checkpoint = other
    moved.train.steps = 6
  with pytest.raises(CheckpointMismatchError, match="trained on frozen parameters [0-9a-f]{12}"):
    train_loop.train(moved, workdir)
  with pytest.raises(CheckpointMismatchError, match="init.checkpoint now gives"):
    runs.load_model(moved, workdir, parallel.make_mesh(moved), log=lambda *_: None)
  assert Checkpointer(os.path.join(workdir, "checkpoints")).latest_step() == 4  # nothing lost


def _kl(p_logits, q_logits):
  p = np.exp(p_logits - p_logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  log_p = np.log(p)
  q = q_logits - q_logits.max(1, keepdims=True)
  log_q = q - np.log(np.exp(q).sum(1, keepdims=True))
  return float(np.mean(np.sum(p * (log_p - log_q), 1)))


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_distillation_loss_equals_a_numpy_reference():
  rng = np.random.default_rng(0)
  s = {"image": _unit(rng.normal(size=(6, 8))), "text": _unit(rng.normal(size=(6, 8))),
       "logit_scale": 10.0}
  t = {"image": _unit(rng.normal(size=(6, 5))), "text": _unit(rng.normal(size=(6, 5))),
       "logit_scale": 20.0}
  s_logits = s["logit_scale"] * s["image"] @ s["text"].T
  t_logits = t["logit_scale"] * t["image"] @ t["text"].T
  expected = 0.5 * (_kl(t_logits, s_logits) + _kl(t_logits.T, s_logits.T))
  got = distillation_loss(jax.tree.map(jnp.float32, s), jax.tree.map(jnp.float32, t))
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_distilling_from_itself_has_zero_loss_and_gradient(source_run):
  workdir, _ = source_run
  config = tiny_config(f"distill.teacher={workdir}")
  mesh = parallel.make_mesh(config)
  (teacher, size), teacher_params = runs.load_teacher(config, mesh, workdir, log=lambda *_: None)
  model, params, _ = runs.load_model(config, workdir, mesh, log=lambda *_: None)
  rng = np.random.default_rng(1)
  images = jnp.asarray(rng.uniform(-1, 1, (8, size, size, 3)), jnp.float32)
  tokens = jnp.asarray(rng.integers(4, 200, (8, config.model.text.context_length)), jnp.int32)

  def loss(p):
    return distillation_loss(model.apply({"params": p}, images, tokens),
                             teacher.apply({"params": teacher_params}, images, tokens))

  value, grads = jax.value_and_grad(loss)(params)
  assert abs(float(value)) < 1e-6
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads)) < 1e-5


def test_a_distilled_run_trains_and_logs_the_term(source_run, tmp_path):
  workdir, _ = source_run
  config = tiny_config(f"distill.teacher={workdir}", f"init.checkpoint={workdir}",
                       "train.steps=2", "eval.at_step0=False")
  train_loop.train(config, str(tmp_path))
  rows = [__import__("json").loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert all(np.isfinite(r["distill_loss"]) for r in rows if "distill_loss" in r)
  assert any("distill_loss" in r for r in rows)


def test_a_teacher_with_another_tokenizer_is_refused(source_run, tmp_path):
  workdir, _ = source_run
  (tmp_path / "tokenizer.model").write_bytes(b"another")
  config = tiny_config(f"distill.teacher={workdir}")
  with pytest.raises(ConfigError, match="trained with another tokenizer"):
    runs.load_teacher(config, parallel.make_mesh(config), str(tmp_path))


@pytest.mark.parametrize("peft", ["full", "lock_image", "lock_text", "lora", "adapter"])
def test_the_finetune_configs_take_each_recipe(peft):
  config = load_config(f"{REPO / 'configs' / 'finetune_clip_rsicd.py'}:arch=ViT-B-32,peft={peft}")
  expected = {"full": (), "lock_image": ("image_tower",), "lock_text": ("text_tower",),
              "lora": ("base",), "adapter": ("base",)}[peft]
  assert config.train.frozen == expected
  assert config.model.lora.rank == (8 if peft == "lora" else 0)
  assert config.model.adapter.dim == (16 if peft == "adapter" else 0)
  with pytest.raises(ConfigError, match="peft='lorra'"):
    load_config(f"{REPO / 'configs' / 'finetune_clip_rsicd.py'}:arch=ViT-B-32,peft=lorra")


def test_frozen_parameters_in_bfloat16(source_run, tmp_path):
  source, reference = source_run
  config = tiny_config(f"init.checkpoint={source}", "train.frozen=('image_tower',)",
                       "train.frozen_dtype=bfloat16", "train.steps=2", "eval.at_step0=False")
  mesh = parallel.make_mesh(config)
  model = state_lib.create_model(config)
  assert model.tower_dtypes == (("image", "bfloat16"),)
  _, frozen, _ = runs.frozen_base(config, model, mesh, log=lambda *_: None)
  flat = _flat(frozen)
  assert flat and all(v.dtype == jnp.bfloat16 for v in flat.values())
  for key, value in flat.items():  # the stored values are the base's, rounded
    np.testing.assert_allclose(np.float32(value), reference[key], rtol=1e-2, atol=1e-6)
  results = train_loop.train(config, str(tmp_path))
  assert np.isfinite(results["mR"])
  with pytest.raises(ConfigError, match="'train.frozen_dtype': unknown 'fp8'"):
    state_lib.create_model(tiny_config("train.frozen_dtype=fp8"))
