"""What the per-step hook calls cost: pluggy dispatch vs a plain function call.

Every optimizer step the Trainer calls ``train_step`` (first result wins) and,
when anyone implements it, ``on_step_end`` (every implementation runs). This
times those two callers exactly as the loop uses them (the per-Trainer callers
resolved once by ``Plugins.direct``) in a tight loop, with:

- no built-in plugins and no extras (the loop then skips ``on_step_end``
  altogether; its caller is timed anyway, for the record);
- the built-ins (console, history, tensorboard, checkpoint), active: an out_dir
  is set and ``on_train_start`` has run, so each does its real per-step check;
- the built-ins plus 1 and plus 10 no-op plugins implementing both hooks.

``train_step``'s answer comes from a plugin returning a ready tensor, registered
before the no-ops so that every no-op runs (and returns None) ahead of it: the
figure is dispatch alone, no model runs. The baseline is a plain Python call
with the same keyword arguments.

    python -m benchmarks.hook_dispatch [--calls 200000] [--trials 5] [--small]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import ezpz
from benchmarks.common import interleaved, report

BUILTINS = ("console", "history", "tensorboard", "checkpoint")
LOSS = torch.zeros(())


class ReadyLoss:
    """The model's train_step, reduced to returning a loss: only dispatch is left."""

    @ezpz.hookimpl
    def train_step(self, batch_idx: int) -> torch.Tensor:
        return LOSS


class NoOp:
    """A plugin that implements both per-step hooks and does nothing in them."""

    @ezpz.hookimpl
    def train_step(self, batch_idx: int) -> None:
        return None

    @ezpz.hookimpl
    def on_step_end(self, step: int) -> None:
        return None


def plain_call(trainer: Any, model: Any, batch: Any, batch_idx: int) -> torch.Tensor:
    return LOSS


def active_trainer(out: Path, extras: int, builtins: bool) -> ezpz.Trainer:
    """A Trainer with its plugins started, stopped mid-epoch at a step nothing is due."""
    config = ezpz.TrainConfig(max_steps=10, out_dir=str(out), device="cpu", precision="fp32")
    plugins = [ReadyLoss(), *(NoOp() for _ in range(extras))]
    trainer = ezpz.Trainer(torch.nn.Linear(2, 2), config, plugins=plugins,
                           block=() if builtins else BUILTINS)
    trainer.setup([(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))])
    trainer.total_steps = 2**62  # never the end of the run, so no checkpoint is due
    trainer.batch_in_epoch = 1  # mid-epoch: no epoch-end checkpoint either
    trainer.hooks.on_train_start(trainer=trainer)
    return trainer


def time_step_end(trainer: ezpz.Trainer, calls: int) -> float:
    hook = trainer.plugins.direct(trainer.hooks.on_step_end)
    start = time.perf_counter()
    for step in range(1, calls + 1):
        hook(trainer, step)
    return 1e6 * (time.perf_counter() - start) / calls


def time_train_step(trainer: ezpz.Trainer, calls: int) -> float:
    hook = trainer.plugins.direct(trainer.hooks.train_step)
    model, batch = trainer.model, (None, None)
    start = time.perf_counter()
    for batch_idx in range(calls):
        hook(trainer, model, batch, batch_idx)
    return 1e6 * (time.perf_counter() - start) / calls


def time_plain(calls: int) -> float:
    call, batch = plain_call, (None, None)
    start = time.perf_counter()
    for batch_idx in range(calls):
        call(None, None, batch, batch_idx)
    return 1e6 * (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200_000, help="hook calls per trial")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="20,000 calls, 2 trials")
    args = parser.parse_args()
    if args.small:
        args.calls, args.trials = 20_000, 2
    # name: (built-ins on, extra no-op plugins)
    setups = {"bare": (False, 0), "builtins": (True, 0), "builtins+1": (True, 1),
              "builtins+10": (True, 10)}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: active_trainer(Path(tmp) / f"run{i}", extras, builtins)
                    for i, (name, (builtins, extras)) in enumerate(setups.items())}
        calls = args.calls
        contenders: dict[str, Callable[[], float]] = {
            "plain function call": lambda: time_plain(calls)}
        for name, trainer in trainers.items():
            contenders[f"{name}: train_step"] = functools.partial(time_train_step, trainer, calls)
            contenders[f"{name}: on_step_end"] = functools.partial(time_step_end, trainer, calls)
        results = interleaved(contenders, trials=args.trials)
        for trainer in trainers.values():
            trainer.hooks.on_exception(trainer=trainer, error=RuntimeError("benchmark over"))
    report(f"Per-step hook dispatch, {calls:,} calls per trial", "us/call", results,
           baseline="plain function call")
    print("  per optimizer step, as the loop calls them (medians):")
    for name, trainer in trainers.items():
        skips = not trainer.hooks.on_step_end.get_hookimpls()
        hooks = ("train_step",) if skips else ("train_step", "on_step_end")
        total = sum(statistics.median(results[f"{name}: {hook}"]) for hook in hooks)
        note = "  (train_step only: no on_step_end implementation, the loop skips it)" \
            if skips else ""
        print(f"    {name:<12} {total:8.3f} us/step{note}")
    print("  bare: built-ins blocked; builtins: console, history, tensorboard and checkpoint,\n"
          "  active with an out_dir; +N: N more plugins whose hooks do nothing")


if __name__ == "__main__":
    main()
