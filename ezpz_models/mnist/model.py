"""MnistCNN: the classic two-convolution MNIST classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MnistCNN(nn.Module):
    """(N, 1, 28, 28) images to (N, 10) log-probabilities."""

    def __init__(self, dropout1: float = 0.25, dropout2: float = 0.5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.dropout1 = nn.Dropout(dropout1)
        self.fc1 = nn.Linear(9216, 128)
        self.dropout2 = nn.Dropout(dropout2)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))  # 26x26
        x = F.relu(self.conv2(x))  # 24x24
        x = F.max_pool2d(x, 2)  # 12x12, so 64 * 12 * 12 = 9216 features
        x = self.dropout1(torch.flatten(x, 1))
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)
