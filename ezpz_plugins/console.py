"""Console progress on rank 0: a tqdm bar on a terminal, plain log lines everywhere else.

On a terminal the bar shows the step, loss, learning rate and throughput, and
redraws at most ``REFRESH_S`` apart however fast the steps are. Otherwise
(output to a file or a pipe, a batch job's log) each ``on_log`` record becomes
one ``logging`` line, every ``log_every`` steps, with no carriage returns.
Metrics come from ``on_log`` only, so the bar never syncs the device. The bar's
step counter is moved by a small thread that reads ``trainer.step`` every
``REFRESH_S``, not by a per-step hook: the plugin costs the training loop
nothing between logging steps, with or without a terminal. ``ezpz train
--quiet`` blocks this plugin.
"""

from __future__ import annotations

import logging
import sys
import threading
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
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    @hookimpl
    def on_train_start(self, trainer: Trainer) -> None:
        self._active = trainer.rank == 0
        self._total = trainer.total_steps
        self._postfix = {}
        if self._active and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self._total, initial=trainer.step, unit="step",
                             dynamic_ncols=True, mininterval=REFRESH_S, file=sys.stderr)
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick, args=(self._bar, trainer),
                                            name="ezpz-progress", daemon=True)
            self._ticker.start()

    def _tick(self, bar: Any, trainer: Trainer) -> None:
        """Move the bar to the Trainer's step, ``REFRESH_S`` apart, until the bar closes."""
        while not self._stop.wait(REFRESH_S):
            bar.update(trainer.step - bar.n)

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
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
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
