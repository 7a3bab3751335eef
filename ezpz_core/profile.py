"""Time spent in each plugin's hooks: ``ezpz train --profile-hooks`` or ``EZPZ_PROFILE_HOOKS=1``.

pluggy's ``add_hookcall_monitoring`` sees one call per hook with all of its
implementations together, so it cannot tell a slow plugin from a fast one.
While profiling, each implementation's function is therefore swapped for a
timing wrapper (and put back by ``detach``). Without profiling nothing is
swapped, and hook calls cost exactly what they always do.

Times are inclusive wall-clock seconds: ``train_step`` includes the model's
forward pass, and a hook that calls other hooks includes their time too.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from ezpz_core import hookspecs
from ezpz_core.plugins import TIMING_WRAPPER

if TYPE_CHECKING:
    from ezpz_core.plugins import Plugins

ENV = "EZPZ_PROFILE_HOOKS"


def wanted(flag: bool = False) -> bool:
    """Whether to profile: the command-line flag, or ``EZPZ_PROFILE_HOOKS`` set and not 0."""
    return flag or os.environ.get(ENV, "").strip() not in ("", "0")


class HookProfile:
    """Accumulates calls and seconds per (plugin, hook) for one Trainer's plugins."""

    def __init__(self, plugins: Plugins) -> None:
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.started = time.perf_counter()
        self._restore: list[tuple[Any, Callable[..., Any]]] = []
        for name in hookspecs.hook_names():
            for impl in getattr(plugins.pm.hook, name).get_hookimpls():
                if impl.wrapper or impl.hookwrapper:  # generators: calling them times nothing
                    continue
                self._restore.append((impl, impl.function))
                impl.function = self._timed(impl.function, (impl.plugin_name, name))  # type: ignore[misc]

    def _timed(self, function: Callable[..., Any], key: tuple[str, str]) -> Callable[..., Any]:
        calls, seconds, clock = self.calls, self.seconds, time.perf_counter

        def timed(*args: Any) -> Any:  # pluggy passes hook arguments positionally
            start = clock()
            try:
                return function(*args)
            finally:
                seconds[key] += clock() - start
                calls[key] += 1

        functools.update_wrapper(timed, function)
        setattr(timed, TIMING_WRAPPER, True)
        return timed

    def detach(self) -> None:
        """Put the original functions back; the numbers gathered so far stay."""
        for impl, function in reversed(self._restore):
            impl.function = function
        self._restore.clear()

    def rows(self) -> list[tuple[str, str, int, float]]:
        """``(plugin, hook, calls, seconds)``, slowest first."""
        found = [(plugin, hook, self.calls[(plugin, hook)], spent)
                 for (plugin, hook), spent in self.seconds.items()]
        return sorted(found, key=lambda row: (-row[3], row[0], row[1]))

    def report(self, stream: TextIO | None = None) -> None:
        """Print the table: one line per (plugin, hook) that was called."""
        out = stream or sys.stderr
        total = max(time.perf_counter() - self.started, 1e-9)
        header = ("plugin", "hook", "calls", "total s", "mean ms", "% of run")
        table = [header] + [
            (plugin, hook, str(calls), f"{spent:.3f}", f"{1000 * spent / max(calls, 1):.3f}",
             f"{100 * spent / total:.1f}")
            for plugin, hook, calls, spent in self.rows()
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        print(f"hook time by plugin ({total:.1f} s run; inclusive wall-clock time)", file=out)
        for row in table:
            cells = [cell.ljust(w) if i < 2 else cell.rjust(w)
                     for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
            print("  ".join(cells).rstrip(), file=out)
