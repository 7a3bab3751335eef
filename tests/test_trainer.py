"""The Trainer as a library: real training of custom modules with the generic fallbacks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ezpz
from ezpz_core.defaults import lr_factor
from ezpz_core.errors import ConfigError, DataError


class CustomModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def _data(n: int = 256, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=generator)
    y = x[:, :3].argmax(dim=1)
    return TensorDataset(x, y)


def test_a_custom_module_learns_with_no_plugin_at_all():
    data = _data()
    train = DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator())
    evaluation = DataLoader(_data(128, seed=1), batch_size=64)
    trainer = ezpz.Trainer(CustomModel(), ezpz.TrainConfig(epochs=15, lr=1e-2, log_every=8))
    result = trainer.fit(train, evaluation)
    assert result.step == 15 * 8
    assert result.eval["eval/accuracy"] > 0.9
    assert result.train["train/loss"] < 0.4
    assert set(result.train) >= {"train/loss", "train/lr", "train/samples_per_sec"}
    assert "train/grad_norm" not in result.train  # opt-in without clipping: it costs a reduction


def test_runs_with_the_same_seed_are_identical_and_other_seeds_differ():
    def run(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(123)  # the model is built outside: the Trainer seeds the run itself
        model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.3), nn.Linear(16, 3))
        loader = DataLoader(_data(), batch_size=32, shuffle=True)
        ezpz.Trainer(model, ezpz.TrainConfig(epochs=2, seed=seed)).fit(loader)
        return model.state_dict()

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_gradient_accumulation_matches_one_big_batch():
    def run(batch_size: int, accum: int) -> torch.Tensor:
        torch.manual_seed(0)
        model = nn.Linear(8, 3)
        loader = DataLoader(_data(64), batch_size=batch_size)
        config = ezpz.TrainConfig(max_steps=2, batch_size=batch_size, grad_accum=accum,
                                  optimizer="sgd", beta1=0.0, lr=0.5)
        ezpz.Trainer(model, config).fit(loader)
        return model.weight.detach().clone()

    assert torch.allclose(run(32, 1), run(16, 2), atol=1e-6)
    assert not torch.allclose(run(32, 1), run(16, 1), atol=1e-6)


def test_max_steps_stops_mid_epoch_and_clipping_bounds_the_reported_norm():
    logs = []

    class Logs:
        @ezpz.hookimpl
        def on_log(self, metrics):
            logs.append(dict(metrics))

    loader = DataLoader(_data(), batch_size=8)
    config = ezpz.TrainConfig(max_steps=5, log_every=5, grad_clip=1e-3, lr=1.0)
    result = ezpz.Trainer(CustomModel(), config, plugins=[Logs()]).fit(loader)
    assert result.step == 5 and result.epoch == 0
    assert logs[-1]["train/grad_norm"] > 1e-3  # the norm before clipping is what is reported


def test_the_logged_loss_and_grad_norm_are_the_logging_steps_own():
    """Checked against torch's own norm, taken from the gradients the optimizer is about to use."""
    seen: dict[int, tuple[float, float]] = {}
    logs: dict[int, dict[str, float]] = {}

    class Watch:
        @ezpz.hookimpl
        def on_train_start(self, trainer):
            def before_step(*_):
                grads = [p.grad for p in trainer.module.parameters() if p.grad is not None]
                seen[trainer.step + 1] = (float(trainer._losses[-1].detach()),
                                          float(torch.nn.utils.get_total_norm(grads)))

            trainer.optimizer.register_step_pre_hook(before_step)

        @ezpz.hookimpl
        def on_log(self, step, metrics):
            if "train/loss" in metrics:
                logs[step] = dict(metrics)

    config = ezpz.TrainConfig(max_steps=9, log_every=3, lr=0.05, log_grad_norm=True)
    ezpz.Trainer(CustomModel(), config, plugins=[Watch()]).fit(DataLoader(_data(), batch_size=8))
    assert sorted(logs) == [3, 6, 9]
    for step, metrics in logs.items():
        loss, norm = seen[step]
        assert metrics["train/loss"] == pytest.approx(loss, rel=1e-6)
        assert metrics["train/grad_norm"] == pytest.approx(norm, rel=1e-5)


def test_warmup_then_cosine_schedule_reaches_the_floor():
    lrs = []

    class Lr:
        @ezpz.hookimpl
        def on_step_end(self, trainer):
            lrs.append(trainer.optimizer.param_groups[0]["lr"])

    loader = DataLoader(_data(), batch_size=16)  # 16 steps
    config = ezpz.TrainConfig(epochs=1, lr=1.0, min_lr=0.1, schedule="cosine", warmup_steps=4)
    ezpz.Trainer(CustomModel(), config, plugins=[Lr()]).fit(loader)
    assert lrs[0] == pytest.approx(0.5)  # after step 1 the lr for step 2 applies: 2/4
    assert lrs[2] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs[3:]))
    mid = lr_factor(10, warmup=4, decay=16, min_ratio=0.1, cosine=True)
    assert mid == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_bf16_autocast_on_cpu_trains():
    loader = DataLoader(_data(), batch_size=32)
    seen = []

    class Dtype:
        @ezpz.hookimpl
        def train_step(self, model, batch):
            out = model(batch[0])
            seen.append(out.dtype)
            return F.cross_entropy(out.float(), batch[1])

    config = ezpz.TrainConfig(epochs=1, precision="bf16")
    result = ezpz.Trainer(CustomModel(), config, plugins=[Dtype()]).fit(loader)
    assert seen[0] == torch.bfloat16 and math.isfinite(result.train["train/loss"])


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(DataError, match="fit\\(\\) needs training data"):
        ezpz.Trainer(CustomModel()).fit()
    with pytest.raises(ConfigError, match="has no length; set max_steps"):
        ezpz.Trainer(CustomModel()).fit(iter([]))
    with pytest.raises(DataError, match="expects \\(inputs, targets\\) batches"):
        ezpz.Trainer(CustomModel(), ezpz.TrainConfig(max_steps=1)).fit([torch.randn(2, 8)])
    with pytest.raises(ValueError, match=r"lr=-0\.1 must be > 0"):
        ezpz.TrainConfig(lr=-0.1)


def test_an_iterable_dataset_without_length_trains_to_max_steps():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            generator = torch.Generator().manual_seed(0)
            while True:
                x = torch.randn(8, generator=generator)
                yield x, x[:3].argmax()

    loader = DataLoader(Stream(), batch_size=16)
    result = ezpz.Trainer(CustomModel(), ezpz.TrainConfig(max_steps=7, log_every=7)).fit(loader)
    assert result.step == 7 and math.isfinite(result.train["train/loss"])
