"""The model-creation guide users start from runs as written against ezpz.

Its code blocks run in order in one namespace, as a reader pasting them would,
with ``wordplay`` standing in for ``ezpz`` as the guide's imports assume.
Only what the guide leaves undefined (``config``, ``train_loader``) is given.
"""

from __future__ import annotations

import re
import types

import pytest
import torch
from conftest import SHARED
from torch.utils.data import DataLoader, TensorDataset

GUIDE = SHARED / "seed" / "model-creation-guide.md"


def _blocks() -> list[str]:
    if not GUIDE.exists():
        pytest.skip(f"{GUIDE} is not here")
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)


def test_every_block_runs_as_written(capsys):
    blocks = _blocks()
    assert len(blocks) == 4
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(64, 784, generator=generator)
    namespace = {
        "__name__": "guide",
        "config": types.SimpleNamespace(lr=1e-3),
        "train_loader": DataLoader(TensorDataset(images, images[:, :10].argmax(1)),
                                   batch_size=16),
    }
    for block in blocks:
        exec(compile(block.replace("wordplay", "ezpz"), str(GUIDE), "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "torch.Size([1, 10])"
    assert printed[1] == "torch.Size([1, 100, 50257])"
    assert printed[2].startswith("Epoch 0, Batch 0, Loss: ")
    assert len([line for line in printed if line.startswith("Epoch ")]) == 10
