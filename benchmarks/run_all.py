"""Run every benchmark in turn, each in its own process, and say which failed.

Each runs as ``python -m benchmarks.NAME`` from the repository root, so a
benchmark's imports, threads and warm caches never leak into the next.
``--small`` is passed on (a smoke run: each finishes in well under a minute,
with figures too noisy to quote). Imports nothing from ``benchmarks`` itself,
so ``python benchmarks/run_all.py`` works as well as ``-m``.

    python -m benchmarks.run_all [--small] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Run in this order: cheapest first, so a broken setup shows up early.
BENCHMARKS = ("cli_startup", "hook_dispatch", "tiny_step", "checkpoint_save", "mnist_epoch",
              "gpt_step", "scaling", "gpu_gpt")
#: Benchmarks that need a CUDA GPU; skipped without one, except as a ``--small`` smoke run
#: (which falls back to the CPU).
NEEDS_CUDA = ("gpu_gpt",)
#: Benchmarks without a ``--small`` flag, and the options that make them one.
SMALL_ARGS = {"gpt_step": ["--steps", "10", "--trials", "1"]}


def command(name: str, small: bool) -> list[str]:
    argv = [sys.executable, "-m", f"benchmarks.{name}"]
    if small:
        argv += SMALL_ARGS.get(name, ["--small"])
    return argv


def has_cuda() -> bool:
    """Asked in a child process, so this one never imports torch."""
    probe = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="smoke-run settings for each")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only these ({', '.join(BENCHMARKS)})")
    args = parser.parse_args()
    failed: list[str] = []
    for name in args.only or BENCHMARKS:
        if name in NEEDS_CUDA and not args.small and not has_cuda():
            print(f"\n== {name}: skipped (needs a CUDA GPU; --small runs it on the CPU)",
                  flush=True)
            continue
        argv = command(name, args.small)
        print(f"\n== {name}: {' '.join(argv[1:])}", flush=True)
        start = time.perf_counter()
        status = subprocess.run(argv, cwd=ROOT, check=False).returncode
        print(f"== {name}: exit {status} after {time.perf_counter() - start:.1f} s", flush=True)
        if status != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
