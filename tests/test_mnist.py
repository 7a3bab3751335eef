"""The built-in MNIST model and its data handling."""

from __future__ import annotations

import pytest
import torch

import ezpz
from ezpz.model import MnistCNN
from ezpz_core.errors import DataError
from ezpz_models.mnist.plugin import MnistOptions


def test_shapes_and_log_probabilities():
    out = MnistCNN()(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)
    assert torch.allclose(out.exp().sum(dim=1), torch.ones(5), atol=1e-5)


def test_trains_through_its_plugin_from_the_library(mnist_dir):
    config = ezpz.TrainConfig(epochs=2, batch_size=32, lr=2e-3)
    trainer = ezpz.Trainer("mnist", config, model_config=MnistOptions(data_dir=str(mnist_dir)))
    result = trainer.fit()
    assert isinstance(trainer.module, MnistCNN)
    assert result.eval["eval/accuracy"] > 0.5
    assert trainer.data is not None and len(trainer.data.train.dataset) == 512


def test_missing_files_say_where_to_put_them(tmp_path):
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    trainer = ezpz.Trainer("mnist", model_config=MnistOptions(data_dir=str(tmp_path)))
    with pytest.raises(DataError) as info:
        trainer.fit()
    message = str(info.value)
    assert f"MNIST files not found under {tmp_path / 'MNIST' / 'raw'}" in message
    assert "train-images-idx3-ubyte" in message and "\n" not in message


def test_data_dir_from_the_environment(mnist_dir, monkeypatch):
    monkeypatch.setenv("EZPZ_DATA_DIR", str(mnist_dir))
    trainer = ezpz.Trainer("mnist", ezpz.TrainConfig(max_steps=1))
    assert trainer.fit().step == 1


def test_the_cli_run_logs_the_gradient_norm_as_its_defaults_ask(mnist_dir, tmp_path):
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "ezpz_core.cli", "train", "mnist", "--data-dir", str(mnist_dir),
         "--max-steps", "4", "--log-every", "2", "--batch-size", "16", "--quiet",
         "--out-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    train = [r["metrics"] for r in records if "train/loss" in r["metrics"]]
    assert len(train) == 2 and all(m["train/grad_norm"] > 0 for m in train)
