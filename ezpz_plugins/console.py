"""Console progress: a tqdm bar on a terminal, plain log lines everywhere else.

Updated from ``on_log`` only, so it costs nothing on steps that do not log and
refreshes at most once per logging interval. Rank 0 only.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ezpz_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from ezpz_core.trainer import Trainer
    from ezpz_core.types import FitResult

log = logging.getLogger("ezpz")

_SHORT = {"train/loss": "loss", "train/lr": "lr", "train/samples_per_sec": "samples/s",
          "train/tokens_per_sec": "tok/s", "train/mfu": "mfu"}


def _fmt(value: float) -> str:
    return f"{value:.3e}" if 0 < abs(value) < 1e-2 else f"{value:.4g}"


class ConsoleProgress:
    """Shows step, loss, learning rate and throughput while training."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._active = False
        self._total: int | None = None

    @hookimpl
    def on_train_start(self, trainer: Trainer) -> None:
        self._active = trainer.rank == 0
        self._total = trainer.total_steps
        if self._active and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self._total, initial=trainer.step, unit="step",
                             dynamic_ncols=True, mininterval=0.25, file=sys.stderr)

    @hookimpl
    def on_log(self, trainer: Trainer, step: int, metrics: Mapping[str, float]) -> None:
        if not self._active:
            return
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            shown = {_SHORT[k]: _fmt(v) for k, v in metrics.items() if k in _SHORT}
            shown.update({k: _fmt(v) for k, v in metrics.items() if k.startswith("eval/")})
            self._bar.set_postfix(shown, refresh=False)
            return
        total = f"/{self._total}" if self._total else ""
        parts = [f"step {step}{total}"]
        parts += [f"{_SHORT.get(k, k)} {_fmt(v)}" for k, v in metrics.items()
                  if k in _SHORT or k.startswith("eval/")]
        log.info(" | ".join(parts))

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @hookimpl
    def on_train_end(self, trainer: Trainer, result: FitResult) -> None:
        self._close()

    @hookimpl
    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        self._close()
