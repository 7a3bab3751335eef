"""Logging for the ``ezpz`` command: one format, the rank when several processes share a log.

``EZPZ_LOG_LEVEL`` (DEBUG, INFO, WARNING, ERROR; default INFO) sets the level.
When the world size is above 1 every line names its rank, since the ranks of a
job usually write into one log file. Lines are written around a live tqdm bar
rather than through it. Library use configures nothing: that is the
application's choice.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from ezpz_core import dist
from ezpz_core.errors import ConfigError

__all__ = ["configure_logging", "log_format"]

LEVEL_ENV = "EZPZ_LOG_LEVEL"


def log_format(rank: int, world_size: int) -> str:
    """The line format: time, rank (only when there are several), level, message."""
    where = f" [rank {rank}]" if world_size > 1 else ""
    return f"%(asctime)s{where} %(levelname)s %(message)s"


class _Handler(logging.StreamHandler[TextIO]):
    """A stream handler that goes through ``tqdm.write`` once tqdm is in use."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm = sys.modules.get("tqdm")
        if tqdm is None:
            super().emit(record)
            return
        try:
            tqdm.tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def configure_logging(stream: TextIO | None = None) -> None:
    """Send log records to ``stream`` (stderr) at ``EZPZ_LOG_LEVEL``; safe to call again."""
    level = os.environ.get(LEVEL_ENV, "INFO").strip().upper()
    if not isinstance(logging.getLevelName(level), int):
        raise ConfigError(f"{LEVEL_ENV}={level!r} must be DEBUG, INFO, WARNING or ERROR")
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(log_format(dist.get_rank(), dist.get_world_size()),
                                           datefmt="%H:%M:%S"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
