"""The MnistCNN plugin: registered through the ``ezpz`` entry point like any other.

Kept free of torch imports at module level so ``ezpz models`` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from ezpz_core.hookspecs import hookimpl
from ezpz_core.types import Data, ModelSpec, Register

if TYPE_CHECKING:
    import torch

    from ezpz_core.trainer import Trainer


def _dropout(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{attribute.name}={value!r} must be in [0, 1)")


@attrs.define(frozen=True)
class MnistOptions:
    """MnistCNN's options: where the data lives and the dropout rates."""

    data_dir: str | None = attrs.field(default=None, metadata={
        "help": "existing MNIST in torchvision's layout (DIR/MNIST/raw); default: $EZPZ_DATA_DIR,"
                " else download to ~/.cache/ezpz/data"})
    dropout1: float = attrs.field(default=0.25, validator=_dropout,
                                  metadata={"help": "dropout after the convolutions"})
    dropout2: float = attrs.field(default=0.5, validator=_dropout,
                                  metadata={"help": "dropout before the classifier"})


def _data_root(options: MnistOptions) -> tuple[Path, bool]:
    """The data folder and whether to download into it."""
    given = options.data_dir or os.environ.get("EZPZ_DATA_DIR")
    if given:
        return Path(given).expanduser(), False
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "ezpz" / "data", True


@hookimpl
def register_models(register: Register) -> None:
    register(ModelSpec(
        name="mnist",
        description="MnistCNN: two convolutions and two dense layers on 28x28 digits",
        config=MnistOptions,
        train_defaults={"epochs": 3, "batch_size": 64, "lr": 1e-3, "optimizer": "adamw",
                        "schedule": "cosine", "log_every": 25, "log_grad_norm": True},
    ))


@hookimpl
def build_data(trainer: Trainer) -> Data:
    from ezpz_core.errors import DataError
    from ezpz_models.mnist.data import loaders

    root, download = _data_root(trainer.model_config)
    if not download and not root.is_dir():
        raise DataError(f"data dir not found: {root}; pass --data-dir DIR holding MNIST/raw")
    config = trainer.config
    train, evaluation = loaders(
        root, download=download, batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size or 1000, seed=config.seed, rank=trainer.rank,
        world_size=trainer.world_size, num_workers=config.num_workers,
    )
    return Data(train, evaluation)


@hookimpl
def build_model(trainer: Trainer) -> torch.nn.Module:
    from ezpz_models.mnist.model import MnistCNN

    options = trainer.model_config
    return MnistCNN(dropout1=options.dropout1, dropout2=options.dropout2)
