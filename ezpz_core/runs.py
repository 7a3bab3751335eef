"""Run directories read back: their record files, best metrics, and ``ezpz runs [DIR]``.

A run directory holds ``config.json`` and ``metrics.jsonl`` from its start, and
``summary.json`` once it finished. ``ezpz runs`` tabulates every run under a
folder so runs compare at a glance without starting TensorBoard; a run with no
summary (crashed, or still going) is listed from its records as ``incomplete``.
Standard library only: the command must not pay for importing torch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ezpz_core.errors import ConfigError

__all__ = [
    "METRICS",
    "SUMMARY",
    "add_parser",
    "best_metrics",
    "describe_run",
    "find_runs",
    "higher_is_better",
    "read_records",
    "truncate_records",
]

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.json"

#: Name parts of metrics where larger is better; every other metric is minimised.
_MAXIMISED = {"acc", "accuracy", "f1", "precision", "recall", "auc", "auroc", "bleu", "rouge",
              "score", "iou", "map", "top1", "top5", "mfu", "tflops"}


def higher_is_better(name: str) -> bool:
    """Whether a larger value of metric ``name`` is better (accuracy) or worse (loss).

    Decided by name, because records carry no direction: ``eval/accuracy`` and
    ``eval/top5`` are maximised, ``eval/loss`` and ``eval/perplexity`` minimised.
    """
    short = name.rsplit("/", 1)[-1].lower()
    return any(part in _MAXIMISED for part in re.split(r"[^a-z0-9]+", short))


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON records of a ``.jsonl`` file, skipping a line torn by a crash mid-write."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def truncate_records(path: Path, last_step: int) -> None:
    """Keep only the records of ``path`` up to ``last_step``, replacing the file atomically.

    A run restarting at step K (resumed from a checkpoint taken at K, or K=0 for a
    fresh run in a used folder) supersedes whatever an earlier attempt logged
    after K, so the continued file has no duplicated and no stale steps.
    """
    if not path.exists():
        return
    kept = [r for r in read_records(path) if r["step"] <= last_step]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as file:
        file.writelines(json.dumps(record) + "\n" for record in kept)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def best_metrics(records: Iterable[Mapping[str, Any]],
                 names: Iterable[str] | None = None) -> dict[str, dict[str, float | int]]:
    """``{name: {"value": best, "step": step}}`` over the records, per ``higher_is_better``.

    ``names`` limits the metrics considered; by default every ``eval/*`` metric
    and ``train/loss``, the ones whose best value says something about a run.
    """
    wanted = set(names) if names is not None else None
    best: dict[str, dict[str, float | int]] = {}
    for record in records:
        for name, value in record.get("metrics", {}).items():
            if wanted is not None and name not in wanted:
                continue
            if wanted is None and not (name.startswith("eval/") or name == "train/loss"):
                continue
            if not isinstance(value, (int, float)) or value != value:  # NaN never wins
                continue
            current = best.get(name)
            better = current is None or (value > current["value"] if higher_is_better(name)
                                         else value < current["value"])
            if better:
                best[name] = {"value": value, "step": record["step"]}
    return best


def find_runs(root: Path) -> list[Path]:
    """Run directories at or below ``root``: those holding a summary or a metrics file."""
    found = {path.parent for name in (SUMMARY, METRICS) for path in root.rglob(name)}
    return sorted(found)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_run(run_dir: Path) -> dict[str, Any]:
    """One run's row: model, steps, final train loss, best eval metrics, time and status."""
    summary = _read_json(run_dir / SUMMARY)
    if summary is not None:
        best = summary.get("best") or {}
        return {
            "model": summary.get("model"),
            "steps": summary.get("steps"),
            "final_loss": (summary.get("final") or {}).get("train/loss"),
            "best_eval": {k: v["value"] for k, v in best.items() if k.startswith("eval/")},
            "elapsed_s": summary.get("elapsed_s"),
            "status": summary.get("status", "finished"),
        }
    records = read_records(run_dir / METRICS)
    config = _read_json(run_dir / CONFIG) or {}
    losses = [r for r in records if "train/loss" in r.get("metrics", {})]
    best = best_metrics(records)
    times = [r["time"] for r in records if isinstance(r.get("time"), (int, float))]
    return {
        "model": config.get("model"),
        "steps": max((r["step"] for r in records), default=0),
        "final_loss": losses[-1]["metrics"]["train/loss"] if losses else None,
        "best_eval": {k: v["value"] for k, v in best.items() if k.startswith("eval/")},
        "elapsed_s": times[-1] - times[0] if len(times) > 1 else None,
        "status": "incomplete",
    }


# --- the command ---------------------------------------------------------------


def _number(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:.4g}"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in (header, *rows)]
    return "\n".join(lines)


def _handle(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if not root.is_dir():
        raise ConfigError(f"no such directory: {root}; pass the folder your runs write into")
    rows = []
    for run_dir in find_runs(root):
        row = describe_run(run_dir)
        name = run_dir.relative_to(root).as_posix()
        rows.append({"run": name if name != "." else run_dir.name, **row})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no runs in {root} (a run folder holds metrics.jsonl or summary.json)")
        return 0
    table = [
        (row["run"], str(row["model"] or "-"), str(row["steps"] if row["steps"] is not None
                                                   else "-"),
         _number(row["final_loss"]),
         ", ".join(f"{k.removeprefix('eval/')} {_number(v)}"
                   for k, v in sorted(row["best_eval"].items())) or "-",
         _duration(row["elapsed_s"]), row["status"])
        for row in rows
    ]
    print(_table(("run", "model", "steps", "final loss", "best eval", "time", "status"), table))
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ezpz runs [DIR]`` to the CLI's subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "runs",
        help="compare the runs in a folder: model, steps, loss, best eval, time",
        description="List the runs under DIR with their model, steps, final training loss, "
        "best evaluation metrics and training time.",
    )
    parser.add_argument("dir", nargs="?", default="runs", metavar="DIR",
                        help="folder holding run directories (default: runs)")
    parser.add_argument("--json", action="store_true", help="one JSON list of the runs")
    parser.set_defaults(handler=_handle)
    return parser
