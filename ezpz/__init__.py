"""ezpz: a plugin-based PyTorch trainer.

The public surface. Names that need torch load on first use, so importing
``ezpz`` (as every plugin does for ``hookimpl``) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ezpz_core.config import TrainConfig
from ezpz_core.dist import (
    get_local_rank,
    get_rank,
    get_torch_backend,
    get_torch_device,
    get_world_size,
)
from ezpz_core.errors import ConfigError, DataError, EzpzError, PluginError
from ezpz_core.hookspecs import hookimpl, hookspec
from ezpz_core.types import Data, FitResult, ModelSpec, Register

if TYPE_CHECKING:
    from ezpz_core.trainer import Trainer

__all__ = [
    "ConfigError",
    "Data",
    "DataError",
    "EzpzError",
    "FitResult",
    "ModelSpec",
    "PluginError",
    "Register",
    "TrainConfig",
    "Trainer",
    "get_local_rank",
    "get_rank",
    "get_torch_backend",
    "get_torch_device",
    "get_world_size",
    "hookimpl",
    "hookspec",
]

_LAZY = {"Trainer": "ezpz_core.trainer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ezpz' has no attribute {name!r}")
