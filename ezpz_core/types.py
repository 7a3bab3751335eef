"""Plain records that hooks receive and return (no torch import)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs


@attrs.frozen
class ModelSpec:
    """A model a plugin offers to ``ezpz train NAME``.

    ``config`` is an attrs class of the model's options (architecture and data);
    the CLI turns its fields into ``--option`` flags and TOML ``[model]`` keys.
    ``train_defaults`` overrides ``TrainConfig`` defaults for this model, below
    a config file and the command line.
    """

    name: str
    description: str = ""
    config: type | None = None
    train_defaults: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.define
class Data:
    """What ``build_data`` returns: loaders plus facts the model needs (``meta``)."""

    train: Iterable[Any]
    eval: Iterable[Any] | None = None
    meta: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class FitResult:
    """The outcome of ``Trainer.fit``: final metrics keyed ``train/*`` and ``eval/*``."""

    step: int
    epoch: int
    train: Mapping[str, float]
    eval: Mapping[str, float]
    elapsed_s: float

    @property
    def metrics(self) -> dict[str, float]:
        return {**self.train, **self.eval}


#: The callback ``register_models`` receives.
Register = Callable[[ModelSpec], None]
