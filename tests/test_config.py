"""Config loading: overrides, unknown keys and wrong types fail early with the key named."""

import pytest

from helpers import SMOKE, tiny_config
from rsjax.cli import main
from rsjax.config import ConfigError, load_config


def test_overrides_apply_with_types():
  config = load_config(SMOKE, ["train.steps=70", "train.learning_rate=1", "model.text.causal=False"])
  assert config.train.steps == 70
  assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
  assert config.model.text.causal is False


def test_runlocal_arg_shrinks():
  assert load_config(SMOKE + ":runlocal").train.steps < load_config(SMOKE).train.steps


def test_unknown_key_suggests_the_right_one():
  with pytest.raises(ConfigError, match=r"unknown config key 'train.setps' \(did you mean 'train.steps'\?\)"):
    load_config(SMOKE, ["train.setps=3"])


def test_wrong_type_names_the_key():
  with pytest.raises(ConfigError, match="train.batch_size.*as int"):
    load_config(SMOKE, ["train.batch_size=abc"])
  with pytest.raises(ConfigError, match="model.text.causal.*expects a bool"):
    load_config(SMOKE, ["model.text.causal=1"])


def test_invalid_values_are_refused():
  with pytest.raises(ConfigError, match="data.image_size"):
    tiny_config("data.image_size=30")
  with pytest.raises(ConfigError, match="model.image.width"):
    tiny_config("model.image.width=33")


def test_cli_reports_config_error_in_one_line(capsys, tmp_path):
  code = main(["train", "--config", SMOKE, "--workdir", str(tmp_path), "--set", "train.stepz=1"])
  assert code == 2
  err = capsys.readouterr().err
  assert "train.stepz" in err and "train.steps" in err and err.count("\n") == 1
