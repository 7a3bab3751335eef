"""Noisy waves to forecast, generated from the run's seed so every run sees the same data."""

from __future__ import annotations

import math

import torch
from torch.utils.data import TensorDataset


def waves(n: int, length: int, noise: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` series of ``length`` steps, each the sum of two sines plus Gaussian noise.

    Periods run from about 7 to 50 steps, so a series of a few dozen steps
    holds enough of a cycle for its next value to be predictable.
    """
    steps = torch.arange(length, dtype=torch.float32)
    cycles = 0.02 + 0.13 * torch.rand(n, 2, 1, generator=generator)
    phase = 2 * math.pi * torch.rand(n, 2, 1, generator=generator)
    amplitude = 0.5 + torch.rand(n, 2, 1, generator=generator)
    clean = (amplitude * torch.sin(2 * math.pi * cycles * steps + phase)).sum(dim=1)
    return clean + noise * torch.randn(n, length, generator=generator)


def next_step_pairs(series: torch.Tensor) -> TensorDataset:
    """Inputs are each series but its last value, targets the same series one step later."""
    values = series.unsqueeze(-1)  # (n, length, 1): one feature per time step
    return TensorDataset(values[:, :-1], values[:, 1:])
