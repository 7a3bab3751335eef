"""The ``forecast`` model for ezpz: a GRU that predicts the next value of noisy waves.

ezpz loads this module through the ``ezpz`` entry point in pyproject.toml. It
shows the hooks a model plugin typically implements: ``register_models`` with
options of its own, ``build_data``, ``build_model``, a ``train_step`` and an
``eval_step`` for a regression (the defaults assume classification),
``configure_optimizers`` for a one-cycle schedule, and an ``on_log`` callback
that keeps a JSON-lines log in the run directory. torch is imported only
inside hooks, so ``ezpz models`` and ``ezpz --help`` stay fast.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

import ezpz

if TYPE_CHECKING:
    import torch

MODEL = "forecast"
#: Written into the run directory by ``on_log``: one JSON object per metrics record.
LOG_FILE = "example_log.jsonl"


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name}={value!r} must be > 0")


@attrs.define(frozen=True)
class ForecastOptions:
    """``ezpz train forecast --hidden 64 --seq-len 48`` (or ``[model]`` in a config file)."""

    hidden: int = attrs.field(default=32, validator=_positive,
                              metadata={"help": "GRU hidden units"})
    layers: int = attrs.field(default=1, validator=_positive,
                              metadata={"help": "stacked GRU layers"})
    seq_len: int = attrs.field(default=48, validator=_positive,
                               metadata={"help": "time steps per generated series"})
    series: int = attrs.field(default=1024, validator=_positive,
                              metadata={"help": "generated training series"})
    noise: float = attrs.field(default=0.05, metadata={"help": "std of the added noise"})


@ezpz.hookimpl
def register_models(register: ezpz.Register) -> None:
    register(ezpz.ModelSpec(
        name=MODEL,
        description="GRU forecasting the next value of noisy waves (ezpz-plugin-example)",
        config=ForecastOptions,
        train_defaults={"epochs": 4, "batch_size": 32, "lr": 1e-2, "log_every": 8},
    ))


@ezpz.hookimpl
def build_data(trainer: ezpz.Trainer) -> ezpz.Data:
    """Training and evaluation series from the run's seed; each process keeps its share."""
    import torch
    from torch.utils.data import DataLoader

    from ezpz_plugin_example.data import next_step_pairs, waves

    options: ForecastOptions = trainer.model_config
    generator = torch.Generator().manual_seed(trainer.config.seed)
    share = slice(trainer.rank, None, trainer.world_size)
    train = next_step_pairs(waves(options.series, options.seq_len, options.noise, generator)[share])
    held_out = waves(max(options.series // 4, 1), options.seq_len, options.noise, generator)
    batch_size = trainer.config.batch_size
    return ezpz.Data(
        DataLoader(train, batch_size=batch_size, shuffle=True,
                   generator=torch.Generator().manual_seed(trainer.config.seed)),
        DataLoader(next_step_pairs(held_out[share]),
                   batch_size=trainer.config.eval_batch_size or batch_size),
        meta={"tokens_per_sample": options.seq_len - 1},  # time steps, reported as tokens/s
    )


@ezpz.hookimpl
def build_model(trainer: ezpz.Trainer) -> torch.nn.Module:
    from ezpz_plugin_example.model import Forecaster

    options: ForecastOptions = trainer.model_config
    return Forecaster(hidden=options.hidden, layers=options.layers)


@ezpz.hookimpl
def configure_optimizers(trainer: ezpz.Trainer, model: torch.nn.Module) -> Any:
    """AdamW with a one-cycle schedule peaking at ``--lr``: it suits short recurrent runs.

    The schedule needs the run's length: ``trainer.total_steps`` is known by
    now (ezpz asks for ``max_steps`` when the data has no length). This
    replaces ezpz's ``--optimizer``, ``--schedule`` and ``--warmup-steps``.
    """
    import torch

    config = trainer.config
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  betas=(config.beta1, config.beta2),
                                  weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr,
                                                   total_steps=trainer.total_steps,
                                                   pct_start=0.25)
    return optimizer, schedule


@ezpz.hookimpl
def train_step(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> Any:
    """Mean squared error, plus the mean absolute error as ``train/mae``."""
    inputs, targets = batch
    error = model(inputs) - targets
    return (error ** 2).mean(), {"mae": error.abs().mean().detach()}


@ezpz.hookimpl
def eval_step(model: torch.nn.Module,
              batch: tuple[torch.Tensor, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """The model's errors and those of persistence (tomorrow = today), the baseline to beat."""
    inputs, targets = batch
    error = model(inputs) - targets
    return {"loss": (error ** 2).mean(), "mae": error.abs().mean(),
            "naive_loss": ((inputs - targets) ** 2).mean()}


@ezpz.hookimpl
def on_log(trainer: ezpz.Trainer, step: int, metrics: Mapping[str, float]) -> None:
    """Append each record to ``RUN/example_log.jsonl``, evaluations with their skill.

    Skill is ``1 - loss / naive_loss``: above 0 the model beats persistence.
    Rank 0 only, and nothing without an ``out_dir`` (library use).
    """
    if trainer.out_dir is None or trainer.rank != 0:
        return
    record: dict[str, Any] = {"step": step, **metrics}
    if metrics.get("eval/naive_loss"):
        record["eval/skill"] = 1.0 - metrics["eval/loss"] / metrics["eval/naive_loss"]
    with open(trainer.out_dir / LOG_FILE, "a") as log:
        log.write(json.dumps(record) + "\n")
