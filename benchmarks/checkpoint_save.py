"""Saving a GPT checkpoint through ezpz vs a plain ``torch.save``.

ezpz's save is what the checkpoint plugin does at each checkpoint:
``trainer.state_dict()`` (full state dicts, RNGs, progress, plugin state),
``ezpz_core.checkpoint.write`` (temporary directory, fsync, marker, rename),
the ``latest`` pointer, then pruning to ``keep_last``. By default the plugin
does the writing on a background thread after copying the state in memory,
so three ezpz figures are printed:

- ``ezpz save (training waits)``: what the training loop is blocked for with
  the default asynchronous save: gathering and copying the state;
- ``ezpz save (until on disk)``: the same save timed until its background
  write is fsynced, renamed and pointed to (``Checkpointer.wait``);
- ``ezpz save, synchronous``: ``checkpoint_async=False``, everything on the
  training thread.

The baseline is ``torch.save({"model": ..., "optimizer": ...}, file)``: no
fsync, no atomicity, no resume state. Another row adds an fsync to it, to tell
the price of durability from ezpz's own overhead. All write into the same
temporary directory, interleaved, after one AdamW step so the optimizer state
is full size; each timing starts with no write in flight. The target is a
ratio of at most 1.2 to the baseline.

Sizes: the GPT plugin's default (4 layers, 4 heads, 128 wide, block 64,
vocab 65) and a larger one (6/6/384, block 256).

    python -m benchmarks.checkpoint_save [--trials 5] [--small]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import attrs
import torch

import ezpz
from benchmarks.common import interleaved, report
from ezpz_models.gpt.config import ModelConfig
from ezpz_models.gpt.model import GPT
from ezpz_plugins.checkpoint import Checkpointer

SIZES = {
    "default 4/4/128, block 64": ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=64,
                                             bias=False, vocab_size=65, dropout=0.0),
    "larger 6/6/384, block 256": ModelConfig(n_layer=6, n_head=6, n_embd=384, block_size=256,
                                             bias=False, vocab_size=65, dropout=0.0),
}


def trained_trainer(config: ModelConfig, out: Path) -> ezpz.Trainer:
    """A Trainer one AdamW step into training, as the checkpoint plugin would find it."""
    torch.manual_seed(0)
    model = GPT(config)
    x = torch.randint(0, config.vocab_size, (4, config.block_size))
    trainer = ezpz.Trainer(model, ezpz.TrainConfig(max_steps=10, out_dir=str(out), device="cpu",
                                                   precision="fp32"))
    trainer.setup([(x, x)])
    assert trainer.optimizer is not None
    _, loss = model(x, x)
    loss.backward()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.step = 1
    return trainer


def ezpz_saver(trainer: ezpz.Trainer) -> Checkpointer:
    """The Trainer's own checkpoint plugin when loaded (its state goes in), else a fresh one."""
    assert trainer.out_dir is not None
    found = trainer.plugins.pm.get_plugin("checkpoint")
    saver = found if isinstance(found, Checkpointer) else Checkpointer()
    saver.root = trainer.out_dir / "checkpoints"
    return saver


def through_ezpz(trainer: ezpz.Trainer, saver: Checkpointer, background: bool,
                 until_on_disk: list[float]) -> float:
    """Milliseconds the caller is blocked; appends the time until durable to ``until_on_disk``."""
    trainer.config = attrs.evolve(trainer.config, checkpoint_async=background)
    trainer.step += 1  # a new checkpoint name each time, pruning the oldest as a run does
    start = time.perf_counter()
    saver.save(trainer)
    blocked = 1000 * (time.perf_counter() - start)
    saver.wait()
    until_on_disk.append(1000 * (time.perf_counter() - start))
    return blocked


def plain_save(trainer: ezpz.Trainer, path: Path, fsync: bool = False) -> float:
    assert trainer.module is not None and trainer.optimizer is not None
    start = time.perf_counter()
    state = {"model": trainer.module.state_dict(), "optimizer": trainer.optimizer.state_dict()}
    with open(path, "wb") as f:
        torch.save(state, f)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    return 1000 * (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="2 trials (smoke run)")
    args = parser.parse_args()
    if args.small:
        args.trials = 2
    for label, config in SIZES.items():
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            trainer = trained_trainer(config, root / "run")
            saver = ezpz_saver(trainer)
            durable: list[float] = []
            through_ezpz(trainer, saver, True, [])  # first-use imports are not what is measured
            plain_save(trainer, root / "plain.pt")
            size_mb = os.path.getsize(root / "plain.pt") / 2**20
            results = interleaved({
                "torch.save": partial(plain_save, trainer, root / "plain.pt"),
                "torch.save + fsync": partial(plain_save, trainer, root / "fsync.pt", fsync=True),
                "ezpz save (training waits)": partial(through_ezpz, trainer, saver, True, durable),
                "ezpz save, synchronous": partial(through_ezpz, trainer, saver, False, []),
            }, trials=args.trials)
            results["ezpz save (until on disk)"] = durable
        params = sum(p.numel() for p in trainer.module.parameters()) if trainer.module else 0
        report(f"GPT checkpoint save, {label}: {params / 1e6:.2f}M parameters, "
               f"{size_mb:.1f} MiB with AdamW state", "ms", results, baseline="torch.save")
        fsynced = statistics.median(results["torch.save + fsync"])
        print(f"  until on disk vs torch.save + fsync: "
              f"{statistics.median(durable) / fsynced:.3f}")


if __name__ == "__main__":
    main()
