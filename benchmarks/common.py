"""Helpers shared by the benchmarks: interleaved trials and a plain report."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable


def machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
            f"threads, Python {platform.python_version()}, torch {torch.__version__}")


def interleaved(contenders: dict[str, Callable[[], float]], trials: int) -> dict[str, list[float]]:
    """Run each contender once per trial, alternating, so drift hits all of them alike.

    Each callable returns the figure it measured (e.g. ms per step).
    """
    results: dict[str, list[float]] = {name: [] for name in contenders}
    for trial in range(trials):
        order = list(contenders.items())
        if trial % 2:
            order.reverse()
        for name, run in order:
            results[name].append(run())
    return results


def report(title: str, unit: str, results: dict[str, list[float]], baseline: str) -> None:
    base = statistics.median(results[baseline])
    print(f"{title}  [{machine()}, {time.strftime('%Y-%m-%d')}]")
    for name, values in results.items():
        median = statistics.median(values)
        spread = f"{min(values):.3f}-{max(values):.3f}"
        print(f"  {name:<28} median {median:10.3f} {unit}  (range {spread}, n={len(values)})"
              f"  ratio {median / base:.3f}")
