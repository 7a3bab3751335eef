"""Training configuration, and merging defaults, a TOML file and overrides.

Later sources win: ``TrainConfig`` defaults, the model's ``train_defaults``,
the ``--config`` TOML file (``[train]`` and ``[model]`` tables), then the
command line. Every bad key or value becomes one ``ConfigError`` line naming
the key, the value and what is allowed.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs

from ezpz_core.errors import ConfigError


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name}={value!r} must be > 0")


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name}={value!r} must be >= 0")


def _one_of(*choices: str) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            raise ValueError(f"{attribute.name}={value!r} must be one of: {', '.join(choices)}")

    return check


def _fraction(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{attribute.name}={value!r} must be in [0, 1)")


def _field(default: Any, help: str, validator: Any = None) -> Any:
    return attrs.field(default=default, validator=validator, metadata={"help": help})


@attrs.define(frozen=True)
class TrainConfig:
    """How to train: schedule, optimisation, precision, logging and output."""

    epochs: int | None = _field(None, "passes over the data (default 1 without max_steps)",
                                _positive)
    max_steps: int | None = _field(None, "stop after this many optimizer steps", _positive)
    batch_size: int = _field(64, "samples per micro-batch on each rank", _positive)
    eval_batch_size: int | None = _field(None, "samples per eval batch (default batch_size)",
                                         _positive)
    lr: float = _field(1e-3, "peak learning rate", _positive)
    min_lr: float = _field(0.0, "learning-rate floor at the end of cosine decay", _non_negative)
    schedule: str = _field("constant", "learning-rate schedule", _one_of("constant", "cosine"))
    warmup_steps: int = _field(0, "linear warmup steps", _non_negative)
    decay_steps: int | None = _field(None, "cosine decay length (default: the whole run)",
                                     _positive)
    optimizer: str = _field("adamw", "optimizer", _one_of("adamw", "adam", "sgd"))
    weight_decay: float = _field(0.0, "weight decay (matrices only)", _non_negative)
    beta1: float = _field(0.9, "Adam beta1 / SGD momentum", _fraction)
    beta2: float = _field(0.999, "Adam beta2", _fraction)
    grad_accum: int = _field(1, "micro-batches per optimizer step", _positive)
    grad_clip: float = _field(0.0, "clip the gradient norm to this (0: off)", _non_negative)
    log_grad_norm: bool = _field(
        False, "log train/grad_norm without clipping too (with clipping it is always logged, "
        "for free)")
    precision: str = _field("auto", "auto: bf16 autocast where supported, else fp32",
                            _one_of("auto", "fp32", "bf16", "fp16"))
    compile: bool = _field(False, "torch.compile the model")
    seed: int = _field(0, "seed for every RNG", _non_negative)
    device: str | None = _field(None, "cuda, xpu, mps or cpu (default: best available)")
    log_every: int = _field(50, "optimizer steps between train-metric records", _positive)
    eval_every: int | None = _field(None, "steps between evaluations (default: each epoch end)",
                                    _positive)
    eval_batches: int | None = _field(None, "limit each evaluation to this many batches",
                                      _positive)
    num_workers: int = _field(0, "DataLoader worker processes", _non_negative)
    out_dir: str | None = _field(None, "where run files go (library default: none written)")
    strategy: str = _field("ddp", "with several processes: ddp, or fsdp (FSDP2 sharding)",
                           _one_of("ddp", "fsdp"))
    dist_timeout: float = _field(600.0, "seconds a collective waits for a dead peer",
                                 _positive)
    checkpoint_every: int | None = _field(
        None, "steps between checkpoints (default: at each evaluation, epoch end and the end)",
        _positive)
    checkpoint_async: bool = _field(
        True, "write checkpoints in the background; the step waits only for a copy in memory")
    keep_last: int = _field(2, "how many recent checkpoints to keep", _positive)
    monitor: str | None = _field(None, "metric whose best checkpoint is also kept, e.g. eval/loss")
    monitor_mode: str = _field("min", "whether the best monitored value is the min or the max",
                               _one_of("min", "max"))

    def __attrs_post_init__(self) -> None:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr!r} must be <= lr={self.lr!r}")


_converter = cattrs.Converter(forbid_extra_keys=True)
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _strict(kind: type) -> Any:
    """No silent coercion: TOML's ``"yes"`` is not a bool and ``2.5`` is not an int."""

    def structure(value: Any, _: type) -> Any:
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            raise TypeError(f"expected {_TYPE_NAMES[kind]}")
        return value

    return structure


for _kind in _TYPE_NAMES:
    _converter.register_structure_hook(_kind, _strict(_kind))


def _first_leaf(exc: BaseException) -> tuple[BaseException, str | None]:
    """The first real error inside cattrs' groups, and the attribute it concerns."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    for note in getattr(exc, "__notes__", None) or []:
        if "@ attribute " in note:
            return exc, note.rsplit("@ attribute ", 1)[1].strip()
    return exc, None


def build(cls: type, values: Mapping[str, Any], section: str) -> Any:
    """Make ``cls`` from ``values`` or raise one ``ConfigError`` line."""
    names = [f.name for f in attrs.fields(cls)]
    for key in values:
        if key not in names:
            raise ConfigError(
                f"unknown key '{key}' in [{section}]; allowed: {', '.join(names)}"
            )
    try:
        return _converter.structure(dict(values), cls)
    except Exception as exc:  # cattrs groups one error per field; report the first
        leaf, field = _first_leaf(exc)
        message = str(leaf).splitlines()[0] if str(leaf) else type(leaf).__name__
        if field is not None:
            message = f"{field}={values.get(field)!r}: {message}"
        raise ConfigError(f"[{section}] {message}") from None


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a config file: ``[train]`` and ``[model]`` tables, and an optional ``model`` name."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {file}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {file}: {exc}") from None
    for key, value in data.items():
        if key not in ("train", "model", "name"):
            raise ConfigError(
                f"unknown key '{key}' in {file}; allowed: name, [train], [model]"
            )
        if key != "name" and not isinstance(value, dict):
            raise ConfigError(f"'{key}' in {file} must be a table like [{key}]")
    return data


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain JSON-able values."""
    result: dict[str, Any] = _converter.unstructure(config)
    return result
