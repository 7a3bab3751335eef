"""Metrics history: ``metrics.jsonl`` as the run goes, ``summary.json`` at the end.

Each record is flushed as it is written, so a crashed run keeps every record up
to the crash. Writes nothing when the Trainer has no ``out_dir``. Rank 0 only.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ezpz_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from ezpz_core.trainer import Trainer
    from ezpz_core.types import FitResult


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class MetricsHistory:
    """Appends every ``on_log`` record to ``<out_dir>/metrics.jsonl``."""

    def __init__(self) -> None:
        self._file: IO[str] | None = None
        self._started = 0.0

    @hookimpl
    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.out_dir is None or trainer.rank != 0:
            return
        from ezpz_core.config import to_dict

        self._started = time.time()
        config = {
            "model": trainer.model_name or type(trainer.module).__name__,
            "train": to_dict(trainer.config),
            "model_config": to_dict(trainer.model_config) if trainer.model_config else None,
        }
        write_json(trainer.out_dir / "config.json", config)
        self._file = open(trainer.out_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    @hookimpl
    def on_log(self, trainer: Trainer, step: int, metrics: Mapping[str, float]) -> None:
        if self._file is None:
            return
        record = {"step": step, "epoch": trainer.epoch, "time": round(time.time(), 3),
                  "metrics": dict(metrics)}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    @hookimpl
    def on_train_end(self, trainer: Trainer, result: FitResult) -> None:
        if self._file is None or trainer.out_dir is None:
            return
        self._close()
        module = trainer.module
        summary = {
            "model": trainer.model_name or type(module).__name__,
            "steps": result.step,
            "epochs": result.epoch + 1,
            "elapsed_s": round(result.elapsed_s, 3),
            "parameters": sum(p.numel() for p in module.parameters()) if module else None,
            "final": result.metrics,
        }
        write_json(trainer.out_dir / "summary.json", summary)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @hookimpl
    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        self._close()
