"""Console progress on rank 0: a tqdm bar on a terminal, plain log lines everywhere else.

On a terminal the bar shows the step, loss, learning rate and throughput, and
redraws at most ``REFRESH_S`` apart however fast the steps are. Otherwise
(output to a file or a pipe, a batch job's log) each ``on_log`` record becomes
one ``logging`` line, every ``log_every`` steps, with no carriage returns.
Metrics come from ``on_log`` only, so the bar never syncs the device;
``on_step_end`` just moves the step counter. ``ezpz train --quiet`` blocks this
plugin.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ezpz_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from ezpz_core.trainer import Trainer
    from ezpz_core.types import FitResult

log = logging.getLogger("ezpz")

#: Seconds between redraws of the bar.
REFRESH_S = 0.25
_SHORT = {"train/loss": "loss", "train/lr": "lr", "train/samples_per_sec": "samples/s",
          "train/tokens_per_sec": "tok/s", "train/mfu": "mfu"}


def _fmt(value: float) -> str:
    return f"{value:.3e}" if 0 < abs(value) < 1e-2 else f"{value:.4g}"


def _shown(metrics: Mapping[str, float]) -> dict[str, str]:
    """The metrics worth a glance, short-named; tokens/s replaces samples/s when known."""
    shown = {_SHORT.get(k, k): _fmt(v) for k, v in metrics.items()
             if k in _SHORT or k.startswith("eval/")}
    if "tok/s" in shown:
        shown.pop("samples/s", None)
    return shown


class ConsoleProgress:
    """Shows step, loss, learning rate and throughput while training."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._active = False
        self._total: int | None = None
        self._postfix: dict[str, str] = {}
        self._next_draw = 0.0

    @hookimpl
    def on_train_start(self, trainer: Trainer) -> None:
        self._active = trainer.rank == 0
        self._total = trainer.total_steps
        self._postfix = {}
        if self._active and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self._total, initial=trainer.step, unit="step",
                             dynamic_ncols=True, mininterval=REFRESH_S, file=sys.stderr)

    @hookimpl
    def on_step_end(self, step: int) -> None:
        if self._bar is None:
            return
        now = time.monotonic()
        if now >= self._next_draw:
            self._next_draw = now + REFRESH_S
            self._bar.update(step - self._bar.n)

    @hookimpl
    def on_log(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self._active:
            return
        if self._bar is not None:
            self._postfix.update(_shown(metrics))
            self._bar.set_postfix(self._postfix, refresh=False)
            return
        total = f"/{self._total}" if self._total else ""
        parts = [f"step {step}{total}", *(f"{k} {v}" for k, v in _shown(metrics).items())]
        log.info(" | ".join(parts))

    def _close(self, step: int | None = None) -> None:
        if self._bar is not None:
            if step is not None:
                self._bar.update(step - self._bar.n)
            self._bar.close()
            self._bar = None

    @hookimpl
    def on_train_end(self, result: FitResult) -> None:
        self._close(result.step)

    @hookimpl
    def on_exception(self) -> None:
        self._close()
