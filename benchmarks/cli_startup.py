"""Start-up time of the ``ezpz`` command, against the interpreter doing nothing.

Commands that only list things must not pay for torch: each is run as a
fresh subprocess (the installed ``ezpz`` script, as a user types it),
interleaved with ``python -c pass`` so load on the machine hits all alike.
A command that fails stops the benchmark: a fast error is not a fast start.

    python -m benchmarks.cli_startup [--runs 10] [--small]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import interleaved, report


def ezpz_command() -> list[str]:
    """The console script next to this interpreter, else the module it runs."""
    script = Path(sys.executable).with_name("ezpz")
    if script.is_file():
        return [str(script)]
    found = shutil.which("ezpz")
    return [found] if found else [sys.executable, "-m", "ezpz_core.cli"]


def timed(argv: list[str]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              check=False)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: "
                             f"{done.stderr.decode(errors='replace').strip()[-500:]}")
        return 1000 * elapsed

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="runs of each command")
    parser.add_argument("--small", action="store_true", help="3 runs each (smoke run)")
    args = parser.parse_args()
    if args.small:
        args.runs = 3
    ezpz = ezpz_command()
    results = interleaved({
        "python -c pass": timed([sys.executable, "-c", "pass"]),
        "ezpz --help": timed([*ezpz, "--help"]),
        "ezpz models": timed([*ezpz, "models"]),
        "ezpz plugins": timed([*ezpz, "plugins"]),
    }, trials=args.runs)
    report(f"CLI start-up, wall time of a subprocess ({' '.join(ezpz)})", "ms", results,
           baseline="python -c pass")


if __name__ == "__main__":
    main()
