"""One MnistCNN training epoch: a hand-written loop vs ezpz, same DataLoader.

A realistic small workload, where the step is milliseconds of convolution and
the trainer's overhead should vanish. Both contenders iterate the very loader
``ezpz_models.mnist.data.loaders`` builds for ``ezpz train mnist`` (a
DistributedSampler with one replica, shuffled by seed 0 and ``set_epoch``),
batch 64, Adam lr 1e-3, cross-entropy, ``.item()`` every 50 steps. ezpz runs
with its default plugins and an out_dir, as ``ezpz train`` would; loading the
data is not timed.

The data is ``--data-dir`` (torchvision's layout, ``DIR/MNIST/raw``), by
default the repository's ``../shared/data/mnist-t10k`` when present; otherwise
random digits in the same IDX format are written to a temporary folder, so
the script always runs (the timing is the same: only the pixels differ).

    python -m benchmarks.mnist_epoch [--data-dir DIR | --fake-data] [--trials 5]
                                     [--batches N] [--small]
"""

from __future__ import annotations

import argparse
import struct
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import ezpz
from benchmarks.common import interleaved, report, report_picture
from ezpz_models.mnist.data import loaders
from ezpz_models.mnist.model import MnistCNN

BATCH, LR, LOG_EVERY = 64, 1e-3, 50
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-t10k"

Loader = Iterable[tuple[torch.Tensor, torch.Tensor]]


def write_fake_mnist(root: Path, n_train: int = 8000, n_test: int = 2000) -> Path:
    """Random digits in MNIST's IDX files, where torchvision looks for them."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 0x0803, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 0x0801, n) + labels.tobytes())
    return root


def build() -> MnistCNN:
    torch.manual_seed(0)
    return MnistCNN()


def hand_written(train: Loader, batches: int) -> float:
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    start = time.perf_counter()
    sampler = getattr(train, "sampler", None)
    if sampler is not None and hasattr(sampler, "set_epoch"):
        sampler.set_epoch(0)
    for step, (x, y) in enumerate(train):
        if step == batches:
            break
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if (step + 1) % LOG_EVERY == 0:
            loss.item()
    return time.perf_counter() - start


def through_ezpz(train: Loader, batches: int, out: Path) -> float:
    config = ezpz.TrainConfig(epochs=1, max_steps=batches, batch_size=BATCH, lr=LR,
                              optimizer="adam", schedule="constant", log_every=LOG_EVERY,
                              device="cpu", out_dir=str(out / f"run-{time.perf_counter_ns()}"))
    trainer = ezpz.Trainer(build(), config)
    trainer.setup(train)
    start = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"MNIST in torchvision's layout (default: {SHARED} if present)")
    parser.add_argument("--fake-data", action="store_true",
                        help="random IDX digits even when real MNIST is at hand")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--batches", type=int, default=None,
                        help="stop each epoch after this many batches (default: whole epoch)")
    parser.add_argument("--small", action="store_true", help="20 batches, 2 trials (smoke run)")
    args = parser.parse_args()
    if args.small:
        args.batches, args.trials = 20, 2
    with tempfile.TemporaryDirectory() as tmp:
        root, what = args.data_dir, "given data"
        if root is None and SHARED.is_dir() and not args.fake_data:
            root, what = SHARED, "MNIST 8k/2k split"
        elif root is None:
            root, what = write_fake_mnist(Path(tmp) / "data"), "random IDX digits"
        train, _ = loaders(root, download=False, batch_size=BATCH, eval_batch_size=1000, seed=0,
                           rank=0, world_size=1, num_workers=0)
        batches = min(args.batches or len(train), len(train))
        results = interleaved({
            "hand-written loop": lambda: hand_written(train, batches),
            "ezpz (default plugins)": lambda: through_ezpz(train, batches, Path(tmp)),
        }, trials=args.trials)
    span = "epoch" if batches == len(train) else f"{batches} of {len(train)} batches"
    report(f"MnistCNN, one {span} ({what}), batch {BATCH}, Adam", "s/epoch", results,
           baseline="hand-written loop")
    print(f"  {report_picture()}")


if __name__ == "__main__":
    main()
