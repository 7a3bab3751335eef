"""TensorBoard: every logged scalar, the run's hyperparameters, text samples, histograms.

Writes ``<out_dir>/tensorboard/`` with ``torch.utils.tensorboard`` on rank 0;
nothing when the Trainer has no ``out_dir``. ``tensorboard --logdir runs``
shows every run under ``runs/``.

- Scalars: each ``on_log`` metric under its own tag (``train/loss``,
  ``eval/accuracy``, ...) at its step: the same values ``metrics.jsonl`` holds.
- HParams tab: the training and model options, the model's parameter count
  and, as metrics, the final value of every scalar tag, so runs compare there.
  A ``model`` text entry names the model and its parameter count.
- Text: each ``on_log_text`` record (GPT: a sample at every evaluation), shown
  preformatted as written.
- ``EZPZ_TB_HISTOGRAMS=N``: weight and gradient histograms every N optimizer
  steps (0 or unset: off). Each one copies every parameter and gradient to the
  host, so they cost time; pick N of a few hundred or more.

Events are flushed at each evaluation, at the end and when the fit raises, and
every ``FLUSH_SECS`` in between. Until then the scalars wait in a list: handing
each record to the writer as it comes would wake tensorboard's writer thread
(which checksums every event in pure Python) on every logging step, and its
fight for the GIL slowed a tiny model's steps by about 5%. Batched, it wakes
once per flush and nothing reaches the disk later than before.

A ``SIGTERM``/``SIGUSR1`` stop (the checkpoint plugin's graceful stop) ends the
fit normally, so it flushes too; the HParams session is then left open, since
the run continues when resumed.

Resuming: a run starting at step K opens the writer with ``purge_step=K+1``, so
TensorBoard drops what an earlier attempt wrote after K and the curves continue
at the right steps without duplicated points (``K=0`` clears a reused folder).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ezpz_core.errors import ConfigError
from ezpz_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from ezpz_core.trainer import Trainer
    from ezpz_core.types import FitResult

log = logging.getLogger("ezpz")

SUBDIR = "tensorboard"
HISTOGRAMS_ENV = "EZPZ_TB_HISTOGRAMS"
#: Seconds between background flushes, so a live TensorBoard lags little behind.
FLUSH_SECS = 10
#: Options that say where a run writes, not how it trains: not hyperparameters.
NOT_HPARAMS = {"out_dir"}

HParam = bool | int | float | str


def histogram_every() -> int:
    """Steps between histograms from ``EZPZ_TB_HISTOGRAMS``; 0 when off."""
    raw = os.environ.get(HISTOGRAMS_ENV, "").strip()
    try:
        every = int(raw) if raw else 0
    except ValueError:
        every = -1
    if every < 0:
        raise ConfigError(f"{HISTOGRAMS_ENV}={raw!r} must be a number of steps (0: off)")
    return every


def hyperparameters(trainer: Trainer) -> dict[str, HParam]:
    """The run's options as HParams values: scalars only, ``None`` left out."""
    import attrs

    from ezpz_core.config import to_dict

    module = trainer.module
    values: dict[str, Any] = {
        "model": trainer.model_name or type(module).__name__,
        "parameters": sum(p.numel() for p in module.parameters()) if module else 0,
        "world_size": trainer.world_size,
    }
    values.update({k: v for k, v in to_dict(trainer.config).items() if k not in NOT_HPARAMS})
    model_config = trainer.model_config
    if model_config is not None and attrs.has(type(model_config)):
        values.update({f"model.{k}": v for k, v in to_dict(model_config).items()})
    return {k: v for k, v in values.items() if isinstance(v, (bool, int, float, str))}


class TensorBoardLogger:
    """Mirrors the run's records into TensorBoard event files."""

    def __init__(self) -> None:
        self._writer: Any = None
        self._handles: list[Any] = []
        self._summary: Any = None
        self._value: Any = None
        self._pending: list[tuple[int, Mapping[str, float]]] = []
        self._next_flush = 0.0

    # --- lifecycle -------------------------------------------------------------

    @hookimpl
    def on_train_start(self, trainer: Trainer) -> None:
        every = histogram_every()  # checked on every rank: a bad value stops them all
        if trainer.out_dir is None or trainer.rank != 0:
            return
        try:
            from tensorboard.compat.proto.summary_pb2 import Summary
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            log.warning("TensorBoard logging is off: %s (pip install tensorboard)", error)
            return
        self._summary, self._value = Summary, Summary.Value
        self._pending.clear()
        self._next_flush = time.monotonic() + FLUSH_SECS
        self._writer = SummaryWriter(
            log_dir=str(trainer.out_dir / SUBDIR),
            purge_step=trainer.step + 1 if trainer.step > 0 else 0,
            flush_secs=FLUSH_SECS,
        )
        if trainer.step == 0:  # a resumed run keeps the first attempt's step-0 entries
            self._write_start(trainer)
        if every:
            self._watch_histograms(trainer, every)

    def _write_start(self, trainer: Trainer) -> None:
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb

        values = hyperparameters(trainer)
        self._writer.file_writer.add_summary(hparams_pb(values), 0)
        self._writer.add_text(
            "model", f"**{values['model']}**: {values['parameters']:,} parameters", 0
        )

    def _write_end(self, step: int, status: str) -> None:
        """End the HParams session with ``status`` (``STATUS_SUCCESS``, ``STATUS_FAILURE``)."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

        end = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value(status),
                                             end_time_secs=time.time())
        data = plugin_data_pb2.HParamsPluginData(session_end_info=end,
                                                 version=metadata.PLUGIN_DATA_VERSION)
        summary = Summary()
        summary.value.add(tag=metadata.SESSION_END_INFO_TAG, tensor=metadata.NULL_TENSOR,
                          metadata=metadata.create_summary_metadata(data))
        self._writer.file_writer.add_summary(summary, step)

    @hookimpl
    def on_log(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._writer is None:
            return
        # One event holding every scalar of the record: what add_scalar writes per tag, read
        # back identically, at a fraction of the cost on a tiny model's logging step.
        self._pending.append((step, metrics))
        now = time.monotonic()
        if now >= self._next_flush or any(tag.startswith("eval/") for tag in metrics):
            self._flush(now)

    def _flush(self, now: float) -> None:
        """Hand the waiting scalars to the writer and have it write them out."""
        file_writer = self._writer.file_writer
        for step, metrics in self._pending:
            values = [self._value(tag=tag, simple_value=value) for tag, value in metrics.items()]
            file_writer.add_summary(self._summary(value=values), step)
        self._pending.clear()
        self._writer.flush()
        self._next_flush = now + FLUSH_SECS

    @hookimpl
    def on_log_text(self, step: int, tag: str, text: str) -> None:
        if self._writer is None:
            return
        # TensorBoard renders text as Markdown; indenting makes it a code block, kept verbatim.
        self._writer.add_text(tag, "\n".join(f"    {line}" for line in text.split("\n")), step)

    @hookimpl
    def on_train_end(self, trainer: Trainer, result: FitResult) -> None:
        stopped = getattr(trainer, "stop_reason", None) is not None  # to be resumed: still open
        self._finish(result.step, None if stopped else "STATUS_SUCCESS")

    @hookimpl
    def on_exception(self, trainer: Trainer) -> None:
        self._finish(trainer.step, "STATUS_FAILURE")

    def _finish(self, step: int, status: str | None) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._writer is not None:
            try:
                self._flush(time.monotonic())
                if status is not None:
                    self._write_end(step, status)
            finally:
                self._writer.close()
                self._writer = None

    # --- histograms ------------------------------------------------------------

    def _watch_histograms(self, trainer: Trainer, every: int) -> None:
        """Record weights and gradients just before every ``every``-th optimizer step.

        An optimizer pre-hook sees the final gradients (accumulated, unscaled,
        clipped), which the Trainer clears right after the step.
        """
        module, optimizer = trainer.module, trainer.optimizer
        if module is None or optimizer is None:
            return

        def before_step(*_: Any) -> None:
            step = trainer.step + 1  # the step this optimizer update completes
            if step % every or self._writer is None:
                return
            for name, param in module.named_parameters():
                self._writer.add_histogram(f"weights/{name}", param.detach().float(), step)
                if param.grad is not None:
                    self._writer.add_histogram(f"grads/{name}", param.grad.detach().float(),
                                               step)

        self._handles.append(optimizer.register_step_pre_hook(before_step))
