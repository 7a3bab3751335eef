"""Hook dispatch: the order of a whole fit, overrides, routing and isolation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ezpz
from ezpz_core import hookspecs


def _loaders(n: int = 64, batch: int = 16) -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=generator)
    y = (x.sum(dim=1) > 0).long()
    data = TensorDataset(x, y)
    return DataLoader(data, batch_size=batch), DataLoader(data, batch_size=batch)


class Recorder:
    """Implements every lifecycle hook and writes down each call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    @ezpz.hookimpl
    def on_train_start(self, trainer):
        self.calls.append(("on_train_start", trainer.step))

    @ezpz.hookimpl
    def on_epoch_start(self, epoch):
        self.calls.append(("on_epoch_start", epoch))

    @ezpz.hookimpl
    def on_step_end(self, step):
        self.calls.append(("on_step_end", step))

    @ezpz.hookimpl
    def on_eval_end(self, step, metrics):
        self.calls.append(("on_eval_end", step, sorted(metrics)))

    @ezpz.hookimpl
    def on_epoch_end(self, epoch):
        self.calls.append(("on_epoch_end", epoch))

    @ezpz.hookimpl
    def on_log(self, step, metrics):
        kind = "eval" if any(k.startswith("eval/") for k in metrics) else "train"
        self.calls.append(("on_log", step, kind))

    @ezpz.hookimpl
    def on_train_end(self, result):
        self.calls.append(("on_train_end", result.step))

    @ezpz.hookimpl
    def on_exception(self, error):
        self.calls.append(("on_exception", type(error).__name__))


def test_full_sequence_of_a_fit_with_evaluation():
    train, evaluation = _loaders()  # 4 batches per epoch
    recorder = Recorder()
    config = ezpz.TrainConfig(epochs=2, log_every=2, eval_every=3, lr=0.1)
    ezpz.Trainer(nn.Linear(4, 2), config, plugins=[recorder]).fit(train, evaluation)
    assert recorder.calls == [
        ("on_train_start", 0),
        ("on_epoch_start", 0),
        ("on_step_end", 1),
        ("on_log", 2, "train"),
        ("on_step_end", 2),
        ("on_eval_end", 3, ["eval/accuracy", "eval/loss"]),
        ("on_log", 3, "eval"),
        ("on_step_end", 3),
        ("on_log", 4, "train"),
        ("on_step_end", 4),
        ("on_epoch_end", 0),
        ("on_epoch_start", 1),
        ("on_step_end", 5),
        ("on_log", 6, "train"),
        ("on_eval_end", 6, ["eval/accuracy", "eval/loss"]),
        ("on_log", 6, "eval"),
        ("on_step_end", 6),
        ("on_step_end", 7),
        ("on_log", 8, "train"),
        ("on_eval_end", 8, ["eval/accuracy", "eval/loss"]),
        ("on_log", 8, "eval"),
        ("on_step_end", 8),
        ("on_epoch_end", 1),
        ("on_train_end", 8),
    ]


def test_epoch_end_evaluation_comes_before_the_steps_end_hook():
    """Checkpoint-style callbacks at step end must see that step's eval, not a stale one."""
    train, evaluation = _loaders()
    recorder = Recorder()
    config = ezpz.TrainConfig(epochs=1, log_every=100)
    ezpz.Trainer(nn.Linear(4, 2), config, plugins=[recorder]).fit(train, evaluation)
    names = [c[0] for c in recorder.calls]
    assert names.index("on_eval_end") < names.index("on_step_end", names.index("on_log"))
    assert recorder.calls[-3:] == [("on_step_end", 4), ("on_epoch_end", 0), ("on_train_end", 4)]


def test_exception_reaches_on_exception_and_is_reraised():
    train, _ = _loaders()

    class Boom:
        @ezpz.hookimpl
        def on_step_end(self, step):
            if step == 2:
                raise RuntimeError("boom")

    recorder = Recorder()
    trainer = ezpz.Trainer(nn.Linear(4, 2), ezpz.TrainConfig(epochs=1),
                           plugins=[recorder, Boom()])
    try:
        trainer.fit(train)
    except RuntimeError as error:
        assert str(error) == "boom"
    else:
        raise AssertionError("the hook's error was swallowed")
    assert recorder.calls[-1] == ("on_exception", "RuntimeError")
    assert ("on_train_end", 2) not in recorder.calls


def test_a_plugin_train_step_overrides_the_fallback_and_adds_metrics():
    train, _ = _loaders()
    seen = []

    class HalfLoss:
        @ezpz.hookimpl
        def train_step(self, trainer, model, batch, batch_idx):
            seen.append(batch_idx)
            inputs, targets = batch
            loss = F.cross_entropy(model(inputs), targets)
            return loss * 0.5, {"full_loss": loss}

    logs = []

    class Logs:
        @ezpz.hookimpl
        def on_log(self, metrics):
            logs.append(dict(metrics))

    config = ezpz.TrainConfig(epochs=1, log_every=4)
    ezpz.Trainer(nn.Linear(4, 2), config, plugins=[HalfLoss(), Logs()]).fit(train)
    assert seen == [0, 1, 2, 3]
    assert abs(logs[-1]["train/loss"] * 2 - logs[-1]["train/full_loss"]) < 1e-5


def test_last_registered_implementation_wins_for_first_result_hooks():
    train, _ = _loaders()
    order = []

    def make(tag):
        class Step:
            @ezpz.hookimpl
            def train_step(self, model, batch):
                order.append(tag)
                return F.cross_entropy(model(batch[0]), batch[1])

        return Step()

    ezpz.Trainer(nn.Linear(4, 2), ezpz.TrainConfig(max_steps=1),
                 plugins=[make("first"), make("second")]).fit(train)
    assert order == ["second"]


def test_two_trainers_do_not_share_plugins_or_state():
    train, _ = _loaders()
    a, b = Recorder(), Recorder()
    trainer_a = ezpz.Trainer(nn.Linear(4, 2), ezpz.TrainConfig(max_steps=2), plugins=[a])
    trainer_b = ezpz.Trainer(nn.Linear(4, 2), ezpz.TrainConfig(max_steps=3), plugins=[b])
    assert trainer_a.plugins.pm is not trainer_b.plugins.pm
    console_a = trainer_a.plugins.pm.get_plugin("console")
    assert console_a is not trainer_b.plugins.pm.get_plugin("console")
    trainer_a.fit(train)
    assert b.calls == []
    trainer_b.fit(train)
    assert a.calls[-1] == ("on_train_end", 2) and b.calls[-1] == ("on_train_end", 3)


def test_hooks_of_another_models_plugin_are_not_called():
    train, _ = _loaders()
    called = []

    class OtherModelPlugin:
        @ezpz.hookimpl
        def register_models(self, register):
            register(ezpz.ModelSpec(name="other-model"))

        @ezpz.hookimpl
        def train_step(self, model, batch):
            called.append("other")
            return F.cross_entropy(model(batch[0]), batch[1])

        @ezpz.hookimpl
        def on_log(self, step):
            called.append(f"log {step}")

    trainer = ezpz.Trainer(nn.Linear(4, 2), ezpz.TrainConfig(max_steps=2, log_every=2),
                           plugins=[OtherModelPlugin()])
    trainer.fit(train)
    assert called == [], "a plugin of another model acted on this run"


def test_every_hook_spec_has_a_docstring_and_is_called_by_the_trainer():
    import inspect

    from ezpz_core import trainer as trainer_module

    loop = inspect.getsource(trainer_module)
    for name in hookspecs.hook_names():
        spec = getattr(hookspecs, name)
        assert inspect.getdoc(spec), f"hook {name} has no documentation"
        if name not in ("register_models", "register_commands", "on_save_checkpoint",
                        "on_load_checkpoint"):
            assert f"hooks.{name}" in loop, f"the Trainer never calls {name}"


def test_direct_callers_keep_pluggys_order_arguments_and_first_result():
    """The per-step fast path must answer exactly as pluggy's own call does."""
    from ezpz_core.plugins import Plugins

    calls: list[tuple] = []

    class Skips:
        @ezpz.hookimpl(tryfirst=True)
        def train_step(self, batch, model):  # not the spec's order, and a subset of it
            calls.append(("skips", batch, model))

    class Answers:
        @ezpz.hookimpl
        def train_step(self, batch_idx, trainer):
            calls.append(("answers", batch_idx, trainer))
            return batch_idx * 10

        @ezpz.hookimpl
        def on_step_end(self, step):
            calls.append(("step", step))

    class Later:
        @ezpz.hookimpl
        def train_step(self):
            calls.append(("later",))
            return -1

        @ezpz.hookimpl(trylast=True)
        def on_step_end(self, trainer, step):
            calls.append(("step-last", trainer, step))
            return step

    plugins = Plugins([Later(), Answers(), Skips()], autoload=False)
    for direct in (False, True):
        calls.clear()
        hook = plugins.pm.hook
        if direct:
            out = Plugins.direct(hook.train_step)("T", "M", "B", 3)
            ends = Plugins.direct(hook.on_step_end)("T", 7)
        else:
            out = hook.train_step(trainer="T", model="M", batch="B", batch_idx=3)
            ends = hook.on_step_end(trainer="T", step=7)
        assert out == 30
        assert ends == [7]
        assert calls == [("skips", "B", "M"), ("answers", 3, "T"), ("step", 7),
                         ("step-last", "T", 7)]
