"""Checkpointing that loses nothing: periodic, best, final, and on SIGTERM/SIGUSR1.

Runs ``trylast`` at the end of each step, after that step's evaluation and
every other plugin's hooks, so what it saves is final for the step. Saves go
through ``ezpz_core.checkpoint``: atomic directories, then the ``latest``
pointer, then pruning, in that order. Writes nothing without an ``out_dir``.

Saving is asynchronous by default (``checkpoint_async``): the step waits only
while the state is gathered and copied in memory; a background thread writes,
fsyncs, renames, moves the pointers and prunes. One write is in flight at a
time: the next save, the end of the run and an exception first wait for it,
so when ``fit`` returns (or raises) the last checkpoint is on disk. A write
that fails is reported at that wait, with the previous checkpoints intact.
``--no-checkpoint-async`` writes on the training thread instead, and needs no
second copy of the state in memory.

When the scheduler sends SIGTERM or SIGUSR1 (as Slurm and PBS do before a
kill), the current step finishes, a checkpoint is saved and the run ends with
``trainer.stop_reason`` set; the CLI then exits with status 75 (EX_TEMPFAIL).
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from ezpz_core import checkpoint
from ezpz_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from ezpz_core.trainer import Trainer

log = logging.getLogger("ezpz")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Checkpointer:
    """Keeps the last ``keep_last`` checkpoints plus the best by ``monitor``."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self.last_saved: Path | None = None
        self._best: tuple[float, str] | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._writer: threading.Thread | None = None
        self._failure: checkpoint.CheckpointError | None = None

    # --- when --------------------------------------------------------------

    @hookimpl
    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.out_dir is None:
            return
        self.root = trainer.out_dir / "checkpoints"
        self._install_signal_handlers(trainer)

    @hookimpl
    def on_eval_end(self, trainer: Trainer, step: int, metrics: Mapping[str, float]) -> None:
        monitor = trainer.config.monitor
        if self.root is None or monitor is None or monitor not in metrics:
            return
        value = metrics[monitor]
        better = self._best is None or (
            value < self._best[0] if trainer.config.monitor_mode == "min" else
            value > self._best[0])
        if better:
            self._best = (value, checkpoint.step_name(step))

    @hookimpl(trylast=True)
    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if self.root is not None and self._due(trainer, step):
            self.save(trainer)

    def _due(self, trainer: Trainer, step: int) -> bool:
        every = trainer.config.checkpoint_every
        end_of_run = trainer.total_steps is not None and step >= trainer.total_steps
        if trainer.should_stop or end_of_run:
            return True
        if every is not None:
            return step % every == 0
        return trainer.last_eval_step == step or trainer.batch_in_epoch == 0

    @hookimpl(trylast=True)
    def on_train_end(self, trainer: Trainer) -> None:
        """Last, so the final write overlaps the other plugins' end-of-run work."""
        from ezpz_core import dist

        try:
            if self.root is not None and (
                    self.last_saved is None
                    or self.last_saved.name != checkpoint.step_name(trainer.step)):
                self.save(trainer)
            self.wait()
        finally:
            self._restore_signal_handlers()
        if self.root is not None:
            dist.barrier()  # no rank returns before the final checkpoint is on disk

    @hookimpl
    def on_exception(self, trainer: Trainer) -> None:
        """Let the write in flight finish: it is the checkpoint a rerun resumes from."""
        try:
            self.wait()
        except checkpoint.CheckpointError as error:
            log.error("%s", error)
        finally:
            self._restore_signal_handlers()

    # --- how ---------------------------------------------------------------

    def save(self, trainer: Trainer) -> Path:
        """Checkpoint the current step: write it, move ``latest``, then prune.

        Every rank takes part in gathering the state; rank 0 alone writes it,
        in the background unless ``checkpoint_async`` is off.
        """
        from ezpz_core import dist

        assert self.root is not None
        self.wait()
        name = checkpoint.step_name(trainer.step)
        background = trainer.config.checkpoint_async
        state = trainer.state_dict()
        if trainer.rank == 0:
            best = self._best[1] if self._best is not None else None
            if background:
                self._writer = threading.Thread(
                    target=self._write_in_background, name="ezpz-checkpoint",
                    args=(name, checkpoint.snapshot(state), best, trainer.config.keep_last))
                self._writer.start()
            else:
                self._write(name, state, best, trainer.config.keep_last)
        if not background:
            dist.barrier()
        self.last_saved = self.root / name
        return self.last_saved

    def wait(self) -> None:
        """Block until the write in flight is on disk; raise its error if it failed."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def _write_in_background(self, name: str, state: dict[str, Any], best: str | None,
                             keep: int) -> None:
        try:
            self._write(name, state, best, keep)
        except checkpoint.CheckpointError as error:
            self._failure = error
        except Exception as error:  # surfaced at the next wait, never lost with the thread
            self._failure = checkpoint.CheckpointError(
                f"could not save checkpoint {name}: {type(error).__name__}: {error}")

    def _write(self, name: str, state: dict[str, Any], best: str | None, keep: int) -> None:
        assert self.root is not None
        checkpoint.write(self.root, name, state)
        checkpoint.point(self.root, checkpoint.LATEST, name)
        if best == name:
            checkpoint.point(self.root, checkpoint.BEST, name)
        self._prune(keep, best)
        log.debug("saved checkpoint %s", self.root / name)

    def _prune(self, keep: int, best: str | None) -> None:
        assert self.root is not None
        done = checkpoint.complete(self.root)
        protected = {p.name for p in done[-keep:]}
        if best is not None:
            protected.add(best)
        for path in done:
            if path.name not in protected:
                shutil.rmtree(path, ignore_errors=True)

    @hookimpl
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["checkpointer"] = {"best": list(self._best) if self._best else None}

    @hookimpl
    def on_load_checkpoint(self, checkpoint: Mapping[str, Any]) -> None:
        best = checkpoint.get("checkpointer", {}).get("best")
        self._best = (float(best[0]), str(best[1])) if best else None

    # --- signals -----------------------------------------------------------

    def _install_signal_handlers(self, trainer: Trainer) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals only reach the main thread; a notebook worker thread cannot

        def stop(signum: int, frame: FrameType | None) -> None:
            trainer.request_stop(signal.Signals(signum).name)

        for sig in STOP_SIGNALS:
            self._previous_handlers[sig] = signal.signal(sig, stop)

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers.clear()
