"""Per-step overhead of the trainer itself, on a model too small to hide it.

A 2-layer MLP (32 -> 64 -> 10) at batch 32 costs tens of microseconds per
step, so whatever a trainer adds per step (hook dispatch, bookkeeping,
callbacks) shows up in full. Batches are pre-built tensors in a list: no
DataLoader, no collation. One torch thread, plain SGD (lr 0.01, no momentum).

Compared, interleaved, in one process:

- a hand-written loop (``.item()`` every 50 steps, as a logging loop would);
- ezpz with its default plugins (console, history, tensorboard, checkpoint)
  and an out_dir, ``log_every=50``;
- ezpz with those four plugins blocked: the difference is their cost;
- PyTorch Lightning (progress bar, logger, checkpointing and model summary
  off) when ``lightning`` or ``pytorch_lightning`` is importable
  (``pip install -e '.[bench]'``).

ezpz is timed from ``fit()`` after ``setup()``; Lightning's ``fit`` includes
its own setup, which it cannot be separated from. Two figures per contender:
the whole fit divided by its steps, and the marginal cost of a step, from a
fit of all the steps minus a fit of a fifth of them: fixed start and
end-of-run work (opening TensorBoard, the final checkpoint and report) cancels
out there, leaving what every step costs.

    python -m benchmarks.tiny_step [--steps 5000] [--trials 5] [--small]
"""

from __future__ import annotations

import argparse
import importlib
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import ezpz
from benchmarks.common import per_step, report, report_picture

BATCH, IN, HIDDEN, OUT = 32, 32, 64, 10
LR, LOG_EVERY = 0.01, 50
DEFAULT_PLUGINS = ("console", "history", "tensorboard", "checkpoint")

Batch = tuple[torch.Tensor, torch.Tensor]


def make_batches(steps: int) -> list[Batch]:
    """Every batch up front, so no contender pays for data."""
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, IN, generator=generator),
             torch.randint(0, OUT, (BATCH,), generator=generator)) for _ in range(steps)]


def build() -> nn.Module:
    """The same initial weights for every contender and trial."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))


def hand_written(batches: list[Batch]) -> float:
    """Seconds for the whole loop over ``batches``."""
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    model.train()
    start = time.perf_counter()
    for step, (x, y) in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if (step + 1) % LOG_EVERY == 0:
            loss.item()
    return time.perf_counter() - start


def through_ezpz(batches: list[Batch], out: Path, block: tuple[str, ...] = ()) -> float:
    """A fresh run directory under ``out`` per trial; ``block`` skips plugins by name."""
    run_dir = str(out / f"run-{time.perf_counter_ns()}")
    config = ezpz.TrainConfig(max_steps=len(batches), lr=LR, optimizer="sgd", beta1=0.0,
                              schedule="constant", log_every=LOG_EVERY, out_dir=run_dir,
                              precision="fp32", device="cpu")
    trainer = ezpz.Trainer(build(), config, block=block)
    trainer.setup(batches)
    start = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - start


def import_lightning() -> ModuleType | None:
    """``lightning.pytorch`` or the older ``pytorch_lightning``, whichever is installed."""
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


class ListBatches:
    """A list seen as a single iterable with a length: Lightning would read a bare list
    as several dataloaders."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def lightning_runner(pl: ModuleType) -> Callable[[list[Batch]], float]:
    """A contender running the same MLP through ``pl.Trainer.fit``."""

    base: Any = pl.LightningModule  # the module is found at run time; its type is not known

    class Module(base):
        def __init__(self) -> None:
            super().__init__()
            self.net = build()

        def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=LR)

    def run(batches: list[Batch]) -> float:
        module = Module()
        trainer = pl.Trainer(max_steps=len(batches), max_epochs=1, accelerator="cpu",
                             devices=1, enable_progress_bar=False, logger=False,
                             enable_checkpointing=False, enable_model_summary=False)
        start = time.perf_counter()
        trainer.fit(module, train_dataloaders=ListBatches(batches))
        return time.perf_counter() - start

    return run


def quiet_lightning() -> None:
    """Lightning's banner lines and data warnings would bury the table."""
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "lightning.fabric",
                 "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(lightning|pytorch_lightning)(\..*)?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5000, help="steps per trial")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="300 steps, 2 trials (smoke run)")
    args = parser.parse_args()
    if args.small:
        args.steps, args.trials = 300, 2
    torch.set_num_threads(1)
    batches = make_batches(args.steps)
    pl = import_lightning()
    with tempfile.TemporaryDirectory() as tmp:
        runners: dict[str, Callable[[int], float]] = {
            "hand-written loop": lambda n: hand_written(batches[:n]),
            "ezpz (default plugins)": lambda n: through_ezpz(batches[:n], Path(tmp)),
            "ezpz (no plugins)": lambda n: through_ezpz(batches[:n], Path(tmp), DEFAULT_PLUGINS),
        }
        if pl is not None:
            quiet_lightning()
            run_lightning = lightning_runner(pl)
            runners[f"lightning {pl.__version__} *"] = lambda n: run_lightning(batches[:n])
        whole, results = per_step(runners, len(batches), args.trials, scale=1e6)
    title = f"Tiny MLP {IN}->{HIDDEN}->{OUT}, batch {BATCH}, SGD, {args.steps} steps per trial"
    report(f"{title}: whole fit / steps", "us/step", whole, baseline="hand-written loop")
    report(f"{title}: marginal cost of a step", "us/step", results,
           baseline="hand-written loop")
    added = (statistics.median(whole["ezpz (default plugins)"])
             - statistics.median(whole["ezpz (no plugins)"]))
    print(f"  the default plugins add {added * args.steps / 1000:.1f} ms per fit of {args.steps} "
          f"steps ({added:.1f} us/step): their start, per-step and end-of-run work together")
    print(f"  {report_picture()}")
    if pl is None:
        print("  lightning: skipped (not installed; pip install -e '.[bench]')")
    else:
        print("  * Lightning's time includes its fit() setup (it cannot be timed apart).")


if __name__ == "__main__":
    main()
