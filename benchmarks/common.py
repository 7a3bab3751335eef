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


def per_step(runners: dict[str, Callable[[int], float]], steps: int, trials: int,
             scale: float) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Time per step two ways: a whole run of ``steps`` divided by them, and the marginal
    cost of a step (that run minus one of ``steps // 5``), which cancels fixed per-run work.

    Each runner takes a step count and returns seconds; ``scale`` converts seconds to the
    unit reported (1e3 for ms, 1e6 for us). Returns ``(whole, marginal)``.
    """
    short = max(1, steps // 5)
    whole: dict[str, list[float]] = {name: [] for name in runners}

    def marginal(name: str, run: Callable[[int], float]) -> Callable[[], float]:
        def trial() -> float:
            full = run(steps)
            whole[name].append(scale * full / steps)
            return scale * (full - run(short)) / (steps - short)

        return trial

    results = interleaved({n: marginal(n, r) for n, r in runners.items()}, trials=trials)
    return whole, results


def report(title: str, unit: str, results: dict[str, list[float]], baseline: str) -> None:
    base = statistics.median(results[baseline])
    print(f"{title}  [{machine()}, {time.strftime('%Y-%m-%d')}]")
    for name, values in results.items():
        median = statistics.median(values)
        spread = f"{min(values):.3f}-{max(values):.3f}"
        print(f"  {name:<28} median {median:10.3f} {unit}  (range {spread}, n={len(values)})"
              f"  ratio {median / base:.3f}")


def report_picture() -> str:
    """Whether ezpz's run report draws its PNG here: the one default cost an extra switches on."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return "report picture: off (matplotlib not installed, as in a default install)"
    from importlib import metadata

    return (f"report picture: on (matplotlib {metadata.version('matplotlib')} installed: "
            "the ezpz[plot] extra), drawn once at the end of each fit")
