"""The forecaster: a GRU reading a series and predicting each next value."""

from __future__ import annotations

import torch
from torch import nn


class Forecaster(nn.Module):
    """Predicts the change to the next value, so an untrained model starts as "no change".

    That baseline (persistence) is the one a forecast has to beat; the plugin
    reports it beside the model's own loss.
    """

    def __init__(self, hidden: int = 32, layers: int = 1) -> None:
        super().__init__()
        self.gru = nn.GRU(1, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        """``(batch, steps, 1)`` values -> ``(batch, steps, 1)`` forecasts of the next values."""
        states, _ = self.gru(series)
        return series + self.head(states)
