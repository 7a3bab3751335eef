"""Metrics history: the files a run leaves for later analysis, written on rank 0.

- ``metrics.jsonl``: one record per ``on_log`` call (``step``, ``epoch``, wall
  ``time``, ``metrics``). Flushed at every evaluation and checkpoint (so a
  checkpoint's records are on disk before it is), when the fit ends or raises,
  and at most ``FLUSH_S`` apart: a process killed outright loses at most that
  much of what followed its last checkpoint, which a resume logs again anyway.
  (A write and flush per record cost a tiny model ~1% per step.)
- ``samples.jsonl``: one record per ``on_log_text`` call (GPT: a generated sample
  at each evaluation).
- At the end: ``summary.json`` (final and best metrics, time, throughput, peak
  memory, parameter count), ``report.md`` for people, and ``curves.png`` with the
  loss and eval curves when matplotlib is installed (``pip install 'ezpz[plot]'``).

A run that starts at step K (resumed from a checkpoint taken at K) first drops
what an earlier attempt logged after K, then appends: the files continue with
neither duplicated nor missing steps. The end-of-run files of an earlier
attempt are removed at the start, so a run in progress never shows a stale
summary. A run stopped by a signal to be resumed (``trainer.stop_reason``) gets
a summary with status ``stopped``. Writes nothing when the Trainer has no
``out_dir``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ezpz_core.hookspecs import hookimpl
from ezpz_core.runs import METRICS, SUMMARY, best_metrics, read_records, truncate_records

if TYPE_CHECKING:
    import torch

    from ezpz_core.trainer import Trainer
    from ezpz_core.types import FitResult

log = logging.getLogger("ezpz")

SAMPLES, REPORT, CURVES = "samples.jsonl", "report.md", "curves.png"
#: Curve colours of the report's picture (tests look for them in the PNG).
TRAIN_COLOR, EVAL_COLOR = "#1f77b4", "#d62728"
OTHER_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")
#: Train metrics averaged over the run as its mean throughput.
THROUGHPUT = ("train/samples_per_sec", "train/tokens_per_sec", "train/tflops", "train/mfu")
NO_PLOT = "No plot: matplotlib is not installed (`pip install 'ezpz[plot]'`)."
#: Longest time a logged record waits in the file's buffer.
FLUSH_S = 2.0


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def peak_memory_mb(device: torch.device | None) -> dict[str, float | None]:
    """The accelerator's peak allocated memory and the process's peak resident memory."""
    import torch

    on_device = None
    if device is not None and device.type == "cuda":
        on_device = torch.cuda.max_memory_allocated(device) / 2**20
    elif device is not None and device.type == "xpu" and hasattr(torch, "xpu"):
        on_device = torch.xpu.max_memory_allocated(device) / 2**20
    host = None
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        host = peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB
    except ImportError:  # Windows has no resource module
        pass
    return {"device": _round(on_device), "host": _round(host)}


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(trainer: Trainer, result: FitResult, records: Sequence[Mapping[str, Any]],
              elapsed_s: float) -> dict[str, Any]:
    """The ``summary.json`` of a finished run, from its result and its whole history."""
    module = trainer.module
    train = [r["metrics"] for r in records if "train/loss" in r["metrics"]]
    throughput = {name: _mean([m[name] for m in train if name in m]) for name in THROUGHPUT}
    return {
        "model": trainer.model_name or type(module).__name__,
        "status": "stopped" if getattr(trainer, "stop_reason", None) else "finished",
        "steps": result.step,
        "epochs": result.epoch + 1,
        "elapsed_s": round(elapsed_s, 3),
        "parameters": sum(p.numel() for p in module.parameters()) if module else None,
        "final": result.metrics,
        "best": best_metrics(records),
        "mean_throughput": {k: v for k, v in throughput.items() if v is not None},
        "peak_memory_mb": peak_memory_mb(trainer.device),
        "world_size": trainer.world_size,
    }


def _series(records: Sequence[Mapping[str, Any]], name: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r["metrics"][name]) for r in records if name in r["metrics"]]
    return [s for s, _ in points], [v for _, v in points]


def plot_curves(records: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Draw the loss curves (train and eval) and other eval metrics into a PNG.

    Uses matplotlib's object API, never pyplot, so it touches no global backend
    state of the process it runs in. Returns False when matplotlib is missing.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    names = sorted({k for r in records for k in r["metrics"] if k.startswith("eval/")})
    others = [n for n in names if n != "eval/loss"]
    # Fixed margins instead of a layout engine: constrained layout measures every label
    # and doubled the drawing time, which a short run's end pays in full.
    width = 6.0 * (1 + bool(others))
    figure = Figure(figsize=(width, 4.0), dpi=100)
    figure.subplots_adjust(left=0.9 / width, right=1 - 0.2 / width, bottom=0.13, top=0.91,
                           wspace=0.25)
    axes = figure.subplots(1, 1 + bool(others), squeeze=False)[0]
    loss = axes[0]
    for name, color, marker in (("train/loss", TRAIN_COLOR, ""), ("eval/loss", EVAL_COLOR, "o")):
        steps, values = _series(records, name)
        if steps:
            loss.plot(steps, values, color=color, marker=marker, linewidth=2, label=name)
    loss.set(xlabel="step", ylabel="loss", title="loss")
    if others:
        for index, name in enumerate(others):
            steps, values = _series(records, name)
            axes[1].plot(steps, values, color=OTHER_COLORS[index % len(OTHER_COLORS)],
                         marker="o", linewidth=2, label=name)
        axes[1].set(xlabel="step", title="evaluation")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, format="png")
    os.replace(tmp, path)
    return True


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e3 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render_report(summary: Mapping[str, Any], picture: str) -> str:
    """``report.md``: the summary for people; ``picture`` is the curves' image link or a note."""
    memory = summary["peak_memory_mb"]
    used = [f"{where} {_fmt(memory[where])} MiB" for where in ("device", "host")
            if memory.get(where) is not None]
    rates = [f"{_fmt(v)} {k.removeprefix('train/').replace('_per_sec', '/s')}"
             for k, v in summary["mean_throughput"].items()]
    lines = [
        f"# {summary['model']}: {summary['steps']} steps",
        "",
        "| | |",
        "|---|---|",
        f"| status | {summary['status']} |",
        f"| training time | {summary['elapsed_s']:.1f} s |",
        f"| epochs | {summary['epochs']} |",
        f"| parameters | {_fmt(summary['parameters'])} |",
        f"| mean throughput | {', '.join(rates) or '-'} |",
        f"| peak memory | {', '.join(used) or '-'} |",
        "",
        "| metric | final | best | best at step |",
        "|---|---|---|---|",
    ]
    best = summary["best"]
    for name in sorted(set(summary["final"]) | set(best)):
        final = summary["final"].get(name)
        top = best.get(name, {})
        lines.append(f"| {name} | {_fmt(final) if final is not None else '-'} | "
                     f"{_fmt(top['value']) if top else '-'} | {top.get('step', '-')} |")
    lines.append("")
    lines.append(picture)
    return "\n".join(lines) + "\n"


class MetricsHistory:
    """Keeps ``metrics.jsonl`` and ``samples.jsonl``; writes the summary and report at the end."""

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._file: IO[str] | None = None
        self._samples: IO[str] | None = None
        self._started = 0.0
        self._next_flush = 0.0
        self._earlier_s = 0.0  # training time of earlier attempts, from the checkpoint

    @hookimpl
    def on_load_checkpoint(self, checkpoint: Mapping[str, Any]) -> None:
        state = checkpoint.get("history")
        if isinstance(state, Mapping):
            self._earlier_s = float(state.get("elapsed_s", 0.0))

    @hookimpl
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._dir is not None:
            checkpoint["history"] = {"elapsed_s": self._elapsed()}
        if self._file is not None:
            self._flush(time.monotonic())

    def _flush(self, now: float) -> None:
        assert self._file is not None
        self._file.flush()
        self._next_flush = now + FLUSH_S

    def _elapsed(self) -> float:
        return self._earlier_s + (time.time() - self._started)

    @hookimpl
    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.out_dir is None or trainer.rank != 0:
            return
        from ezpz_core.config import to_dict

        self._dir = trainer.out_dir
        self._started = time.time()
        config = {
            "model": trainer.model_name or type(trainer.module).__name__,
            "train": to_dict(trainer.config),
            "model_config": to_dict(trainer.model_config) if trainer.model_config else None,
        }
        write_json(self._dir / "config.json", config)
        for name in (METRICS, SAMPLES):
            truncate_records(self._dir / name, trainer.step)
        for name in (SUMMARY, REPORT, CURVES):  # an earlier attempt's; this one is not done
            (self._dir / name).unlink(missing_ok=True)
        self._file = open(self._dir / METRICS, "a", encoding="utf-8")  # noqa: SIM115
        self._next_flush = time.monotonic() + FLUSH_S

    @hookimpl
    def on_log(self, trainer: Trainer, step: int, metrics: Mapping[str, float]) -> None:
        if self._file is None:
            return
        record = {"step": step, "epoch": trainer.epoch, "time": round(time.time(), 3),
                  "metrics": dict(metrics)}
        self._file.write(json.dumps(record) + "\n")
        now = time.monotonic()
        if now >= self._next_flush or any(name.startswith("eval/") for name in metrics):
            self._flush(now)

    @hookimpl
    def on_log_text(self, step: int, tag: str, text: str) -> None:
        if self._dir is None:
            return
        if self._samples is None:
            self._samples = open(self._dir / SAMPLES, "a", encoding="utf-8")  # noqa: SIM115
        record = {"step": step, "time": round(time.time(), 3), "tag": tag, "text": text}
        self._samples.write(json.dumps(record) + "\n")
        self._samples.flush()

    @hookimpl
    def on_train_end(self, trainer: Trainer, result: FitResult) -> None:
        if self._dir is None:
            return
        self._close()
        records = read_records(self._dir / METRICS)
        summary = summarize(trainer, result, records, self._elapsed())
        write_json(self._dir / SUMMARY, summary)
        picture = NO_PLOT
        try:
            if plot_curves(records, self._dir / CURVES):
                picture = f"![loss and eval curves]({CURVES})"
            else:
                log.info(NO_PLOT)
        except Exception as error:  # a plotting failure must not fail a finished run
            picture = f"No plot: drawing {CURVES} failed ({type(error).__name__}: {error})."
            log.warning(picture)
        (self._dir / REPORT).write_text(render_report(summary, picture), encoding="utf-8")

    def _close(self) -> None:
        for file in (self._file, self._samples):
            if file is not None:
                file.close()
        self._file = self._samples = None

    @hookimpl
    def on_exception(self) -> None:
        self._close()
