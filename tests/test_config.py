"""Configuration: sources merge in order, and every mistake is one line naming the key."""

from __future__ import annotations

import pytest

from ezpz_core.config import TrainConfig, build, read_toml
from ezpz_core.errors import ConfigError
from ezpz_models.mnist.plugin import MnistOptions


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr": -1.0}, "lr=-1.0 must be > 0"),
        ({"lr": "fast"}, "lr='fast': expected a number"),
        ({"epochs": 2.5}, "epochs=2.5: expected an integer"),
        ({"compile": "yes"}, "compile='yes': expected true or false"),
        ({"schedule": "linear"}, "schedule='linear' must be one of: constant, cosine"),
        ({"lr": 1e-4, "min_lr": 1e-3}, "min_lr=0.001 must be <= lr=0.0001"),
        ({"lrr": 0.1}, "unknown key 'lrr' in [train]; allowed: epochs,"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(values, message):
    with pytest.raises(ConfigError) as info:
        build(TrainConfig, values, "train")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_ints_are_accepted_for_floats_and_values_land():
    config = build(TrainConfig, {"lr": 1, "epochs": 3, "device": None}, "train")
    assert config.lr == 1.0 and isinstance(config.lr, float) and config.epochs == 3


def test_model_options_validate_too():
    with pytest.raises(ConfigError, match=r"\[model\] dropout1=1.5 must be in \[0, 1\)"):
        build(MnistOptions, {"dropout1": 1.5}, "model")


def test_toml_file_tables_and_errors(tmp_path):
    good = tmp_path / "run.toml"
    good.write_text('name = "mnist"\n[train]\nlr = 0.01\n[model]\ndropout1 = 0.1\n')
    assert read_toml(good) == {"name": "mnist", "train": {"lr": 0.01},
                               "model": {"dropout1": 0.1}}
    bad = tmp_path / "bad.toml"
    bad.write_text("[trian]\nlr = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        read_toml(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        read_toml(broken)
    with pytest.raises(ConfigError, match="config file not found"):
        read_toml(tmp_path / "missing.toml")
