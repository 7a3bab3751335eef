"""GPT training throughput with 1 process vs 2 (DDP, gloo) on this machine.

Runs ``ezpz train gpt`` as a user would, once plain and once with ``--nproc 2``,
each for ``--steps`` steps at the same per-rank batch (the GPT default, 12), on
tiny Shakespeare when it is at hand (``--data``; default: the repository's
``../shared/data/text/tinyshakespeare.txt``) or else the plugin's default corpus.
Throughput is ``train/tokens_per_sec`` (all ranks together) from the run's
``summary.json`` (``mean_throughput``: the mean over logged intervals); the
"steady" line drops the first interval, which pays for warm-up. Evaluation is
cut to 2 batches: it is not counted in throughput, only in wall time.

Threads: a lone process uses torch's default (one per core) unless
``OMP_NUM_THREADS`` is set; torchrun sets ``OMP_NUM_THREADS=1`` per rank when it
is unset. So a third row runs 1 process with 1 thread: 2 ranks over it is
DDP's parallel efficiency, 2 ranks over the default 1 process is what a user
gains. (On a loaded machine, 2 threads in one process can be several times
slower than 1: they spin waiting for each other.)

    python -m benchmarks.scaling [--data FILE] [--steps 300] [--trials 3] [--small]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from benchmarks.cli_startup import ezpz_command
from benchmarks.common import report

SHAKESPEARE = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text"
               / "tinyshakespeare.txt")


def train(out: Path, nproc: int, threads: int | None, steps: int,
          data: Path | None) -> tuple[float, float]:
    """One run; returns (mean tokens/s from summary.json, mean without the first interval).

    ``threads`` sets OMP_NUM_THREADS for every rank; None leaves the environment as it is.
    """
    log_every = max(1, steps // 6)
    argv = [*ezpz_command(), "train", "gpt", "--max-steps", str(steps), "--log-every",
            str(log_every), "--eval-batches", "2", "--out-dir", str(out), "--quiet"]
    if data is not None:
        argv += ["--data", str(data)]
    if nproc > 1:
        argv += ["--nproc", str(nproc)]
    env = {**os.environ, "EZPZ_LOG_LEVEL": "WARNING"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    mean = float(summary["mean_throughput"]["train/tokens_per_sec"])
    rates = []
    with open(out / "metrics.jsonl", encoding="utf-8") as f:
        for line in f:
            metrics = json.loads(line)["metrics"]
            if "train/tokens_per_sec" in metrics:
                rates.append(float(metrics["train/tokens_per_sec"]))
    steady = statistics.mean(rates[1:]) if len(rates) > 1 else mean
    return mean, steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None,
                        help=f"text to train on (default: {SHAKESPEARE} if present)")
    parser.add_argument("--steps", type=int, default=300, help="steps per run")
    parser.add_argument("--trials", type=int, default=3, help="runs of each configuration")
    parser.add_argument("--small", action="store_true", help="8 steps, 1 trial (smoke run)")
    args = parser.parse_args()
    if args.small:
        args.steps, args.trials = 8, 1
    data = args.data or (SHAKESPEARE if SHAKESPEARE.is_file() else None)
    # name: (processes, OMP_NUM_THREADS or None for the environment's own)
    setups = {"1 process": (1, None), "1 process, 1 thread": (1, 1),
              "2 processes (DDP)": (2, None)}
    means: dict[str, list[float]] = {name: [] for name in setups}
    steady: dict[str, list[float]] = {f"{name}, steady": [] for name in setups}
    with tempfile.TemporaryDirectory() as tmp:
        for trial in range(args.trials):
            order = list(setups.items())
            if trial % 2:
                order.reverse()
            for index, (name, (nproc, threads)) in enumerate(order):
                out = Path(tmp) / f"run-{trial}-{index}"
                mean, rest = train(out, nproc, threads, args.steps, data)
                means[name].append(mean)
                steady[f"{name}, steady"].append(rest)
    corpus = data.name if data is not None else "the GPT plugin's default corpus"
    title = f"GPT 4/4/128 tokens/s (all ranks), {args.steps} steps per run, {corpus}"
    report(title + " [mean_throughput]", "tok/s", means, baseline="1 process")
    report(title + " [steady: first interval dropped]", "tok/s", steady,
           baseline="1 process, steady")
    two = statistics.median(means["2 processes (DDP)"])
    print(f"  speed-up of 2 processes (mean_throughput medians): "
          f"{two / statistics.median(means['1 process']):.2f}x over 1 process, "
          f"{two / statistics.median(means['1 process, 1 thread']):.2f}x over 1 process with "
          f"1 thread  (OMP_NUM_THREADS in the environment: "
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')})")


if __name__ == "__main__":
    main()
