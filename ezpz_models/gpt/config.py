"""The GPT architecture as a frozen attrs record.

Kept free of torch so the CLI can list ``--n_layer``-style options (from each
field's ``help`` metadata) without paying for a torch import.
"""

from __future__ import annotations

from typing import Any

import attrs


def _positive_int(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """Reject zero, negatives, floats and bools, which all slip into sizes from configs."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{attribute.name}={value!r} must be a positive integer")


def _dropout(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """Dropout of 1 would zero every activation, so the interval is half-open."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{attribute.name}={value!r} must be a number in [0, 1)")


def _boolean(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """Strings such as "false" are truthy, so only real bools are accepted."""
    if not isinstance(value, bool):
        raise ValueError(f"{attribute.name}={value!r} must be true or false")


def _field(default: Any, help: str, validator: Any = None) -> Any:
    return attrs.field(default=default, validator=validator, metadata={"help": help})


@attrs.define(frozen=True)
class ModelConfig:
    """GPT-2 shaped decoder; the defaults are GPT-2 small with a padded vocabulary."""

    n_layer: int = _field(12, "number of transformer blocks", _positive_int)
    n_head: int = _field(12, "attention heads per block", _positive_int)
    n_embd: int = _field(768, "embedding width (a multiple of n_head)", _positive_int)
    block_size: int = _field(1024, "longest context in tokens", _positive_int)
    bias: bool = _field(True, "use biases in Linear and LayerNorm layers", _boolean)
    vocab_size: int = _field(
        50304, "token vocabulary size (50304 pads GPT-2's 50257 for speed)", _positive_int
    )
    dropout: float = _field(0.0, "dropout probability in [0, 1)", _dropout)

    def __attrs_post_init__(self) -> None:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head
