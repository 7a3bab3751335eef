"""ezpz: a plugin-based PyTorch trainer.

The public surface, documented in docs/plugins.md: what ``__all__`` lists is
stable; everything else (``ezpz_core`` included) may change without notice.
Names that need torch, or are needed only once something failed, load on first
use, so importing ``ezpz`` (as every plugin does for ``hookimpl``) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ezpz_core.config import TrainConfig
from ezpz_core.dist import (
    cleanup,
    get_local_rank,
    get_rank,
    get_torch_backend,
    get_torch_device,
    get_world_size,
    setup_torch,
)
from ezpz_core.errors import ConfigError, DataError, EzpzError, PluginError
from ezpz_core.hookspecs import hookimpl, hookspec
from ezpz_core.types import Data, FitResult, ModelSpec, Register

if TYPE_CHECKING:
    from ezpz_core.checkpoint import CheckpointError
    from ezpz_core.plugins import PluginHookError
    from ezpz_core.trainer import Trainer

__all__ = [
    "CheckpointError",
    "ConfigError",
    "Data",
    "DataError",
    "EzpzError",
    "FitResult",
    "ModelSpec",
    "PluginError",
    "PluginHookError",
    "Register",
    "TrainConfig",
    "Trainer",
    "cleanup",
    "get_local_rank",
    "get_rank",
    "get_torch_backend",
    "get_torch_device",
    "get_world_size",
    "hookimpl",
    "hookspec",
    "setup_torch",
]

_LAZY = {
    "CheckpointError": "ezpz_core.checkpoint",
    "PluginHookError": "ezpz_core.plugins",
    "Trainer": "ezpz_core.trainer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ezpz' has no attribute {name!r}")
