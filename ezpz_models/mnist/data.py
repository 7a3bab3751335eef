"""MNIST through torchvision, held in memory as normalised tensors."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from ezpz_core.errors import DataError

MEAN, STD = 0.1307, 0.3081
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def load_split(root: Path, train: bool, download: bool) -> TensorDataset:
    """One split as (images, labels) tensors; a one-line DataError when it cannot be had."""
    from torchvision.datasets import MNIST

    where = root / "MNIST" / "raw"
    try:
        dataset = MNIST(str(root), train=train, download=download)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError...
        if download:
            why = f"could not download MNIST into {where} ({type(exc).__name__}: {exc})"
        else:
            why = f"MNIST files not found under {where}"
        raise DataError(
            f"{why}; put {', '.join(FILES)} (or their .gz) in {where}, or pass --data-dir DIR"
        ) from None
    images = (dataset.data.unsqueeze(1).float() / 255.0 - MEAN) / STD
    return TensorDataset(images, dataset.targets.long())


def loaders(
    root: Path, *, download: bool, batch_size: int, eval_batch_size: int, seed: int,
    rank: int, world_size: int, num_workers: int,
) -> tuple[DataLoader[tuple[torch.Tensor, ...]], DataLoader[tuple[torch.Tensor, ...]]]:
    """Shuffled training batches (order from seed and epoch) and ordered eval batches."""
    train_set = load_split(root, train=True, download=download)
    eval_set = load_split(root, train=False, download=download)
    sampler: DistributedSampler[tuple[torch.Tensor, ...]] = DistributedSampler(
        train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    eval_sampler: DistributedSampler[tuple[torch.Tensor, ...]] = DistributedSampler(
        eval_set, num_replicas=world_size, rank=rank, shuffle=False)
    train = DataLoader(train_set, batch_size=batch_size, sampler=sampler,
                       num_workers=num_workers)
    evaluation = DataLoader(eval_set, batch_size=eval_batch_size, sampler=eval_sampler,
                            num_workers=num_workers)
    return train, evaluation
