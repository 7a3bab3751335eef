"""``ezpz launch``: start one process per accelerator, locally or across a batch job's nodes.

The launcher is chosen from the environment: torchrun on a workstation, ``srun`` inside a Slurm
job and ``mpiexec`` (MPICH/PALS flags) inside a PBS job. Under a scheduler no torchrun is needed:
each task finds its rank through `ezpz_core.dist`, which reads the scheduler's variables.
`build_command` is pure apart from counting local accelerators, so ``ezpz train --nproc`` and the
tests can reuse it.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

from ezpz_core.errors import ConfigError

__all__ = ["add_parser", "build_command", "local_accelerators", "run_command"]

_PYTHON_RE = re.compile(r"python(\d+(\.\d+)*)?")
_TRAILING_INT_RE = re.compile(r"(?:.*:)?(\d+)")
_USAGE_HINT = "e.g. ezpz launch -n 2 -- python train.py"


def local_accelerators(environ: Mapping[str, str] | None = None) -> int:
    """CUDA (or else XPU) devices this process can see; 0 on a CPU-only machine.

    ``TORCH_DEVICE=cpu`` (or mps) in `environ` answers 0 without importing torch, so CPU runs
    on a GPU box are not silently multiplied.
    """
    env = os.environ if environ is None else environ
    forced = env.get("TORCH_DEVICE", "").strip().lower()
    if forced.startswith(("cpu", "mps")):
        return 0
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.device_count())
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return int(xpu.device_count())
    return 0


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    """An integer variable, or None when unset; a malformed one is a one-line error."""
    value = environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer") from None


def _python_args(command: Sequence[str]) -> list[str] | None:
    """Interpreter arguments for a Python command (script or ``-m``), or None for anything else.

    ``ezpz ...`` becomes ``-m ezpz_core.cli ...`` so it does not depend on the console script
    being on every node's PATH; a bare ``python``/``python3`` means this interpreter, whose
    environment has ezpz and torch installed.
    """
    head, rest = command[0], list(command[1:])
    if os.path.basename(head) == "ezpz":
        return ["-m", "ezpz_core.cli", *rest]
    if head.endswith(".py"):
        return [head, *rest]
    if "/" not in head and _PYTHON_RE.fullmatch(head):
        if len(rest) >= 2 and rest[0] == "-m":
            return rest
        if rest and not rest[0].startswith("-"):
            return rest
    return None


def _slurm_command(
    target: list[str], nproc: int | None, nnodes: int | None, environ: Mapping[str, str]
) -> list[str]:
    """``srun`` over the job's allocation: one task per accelerator on each node."""
    from ezpz_core.dist import expand_hostlist

    job_nodes = _env_int(environ, "SLURM_NNODES") or _env_int(environ, "SLURM_JOB_NUM_NODES")
    if job_nodes is None:
        listed = environ.get("SLURM_JOB_NODELIST", "").strip()
        job_nodes = len(expand_hostlist(listed)) if listed else 1
    nodes = job_nodes if nnodes is None else nnodes
    if nodes > job_nodes:
        raise ConfigError(f"--nnodes {nodes} but Slurm job {environ.get('SLURM_JOB_ID')} "
                          f"has {job_nodes} node(s)")
    if nproc is None:
        gpus = environ.get("SLURM_GPUS_ON_NODE", "").strip() or environ.get(
            "SLURM_GPUS_PER_NODE", "").strip()
        match = _TRAILING_INT_RE.fullmatch(gpus)
        nproc = (_env_int(environ, "SLURM_NTASKS_PER_NODE")
                 or (int(match.group(1)) if match else None)
                 or local_accelerators(environ) or 1)
    _check_counts(nproc, nodes)
    return ["srun", f"--ntasks={nproc * nodes}", f"--nodes={nodes}",
            f"--ntasks-per-node={nproc}", "--kill-on-bad-exit=1", *target]


def _pbs_command(
    target: list[str], nproc: int | None, nnodes: int | None, environ: Mapping[str, str]
) -> list[str]:
    """``mpiexec`` (MPICH/PALS) over the job's node file; it repeats a host once per slot."""
    from ezpz_core.dist import _read_nodefile

    nodefile = environ.get("PBS_NODEFILE", "").strip()
    if not nodefile:
        raise ConfigError(f"PBS job {environ.get('PBS_JOBID')} has no PBS_NODEFILE; "
                          "run ezpz launch from the job script")
    job_nodes = len(_read_nodefile(nodefile))
    nodes = job_nodes if nnodes is None else nnodes
    if nodes > job_nodes:
        raise ConfigError(f"--nnodes {nodes} but {nodefile} lists {job_nodes} node(s)")
    if nproc is None:
        nproc = local_accelerators(environ) or 1
    _check_counts(nproc, nodes)
    return ["mpiexec", "-n", str(nproc * nodes), "--ppn", str(nproc),
            "--hostfile", nodefile, *target]


def _local_command(
    command: Sequence[str], nproc: int | None, nnodes: int | None, environ: Mapping[str, str]
) -> list[str]:
    """torchrun, standalone on one node; across nodes it meets at MASTER_ADDR:MASTER_PORT."""
    from ezpz_core.dist import DEFAULT_MASTER_PORT

    nodes = 1 if nnodes is None else nnodes
    if nproc is None:
        nproc = local_accelerators(environ) or 1
    _check_counts(nproc, nodes)
    out = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nodes == 1:
        out.append("--standalone")
    else:
        host = environ.get("MASTER_ADDR", "").strip() or "localhost"
        port = environ.get("MASTER_PORT", "").strip() or str(DEFAULT_MASTER_PORT)
        out += [f"--nnodes={nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={host}:{port}"]
    python = _python_args(command)
    return out + (python if python is not None else ["--no-python", *command])


def _check_counts(nproc: int, nnodes: int) -> None:
    if nproc < 1:
        raise ConfigError(f"-n must be at least 1, got {nproc}")
    if nnodes < 1:
        raise ConfigError(f"--nnodes must be at least 1, got {nnodes}")


def build_command(
    command: Sequence[str],
    nproc: int | None = None,
    nnodes: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """The argv that starts `command` as ``nproc`` processes on each of ``nnodes`` nodes.

    Defaults come from the scheduler found in `environ` (``os.environ`` unless given): Slurm's
    tasks or GPUs per node and node count, PBS's node file, else this machine's accelerators
    (1 on CPU) and one node.
    """
    env = os.environ if environ is None else environ
    if not command:
        raise ConfigError(f"no COMMAND to launch; {_USAGE_HINT}")
    if nproc is not None or nnodes is not None:
        _check_counts(1 if nproc is None else nproc, 1 if nnodes is None else nnodes)
    if env.get("SLURM_JOB_ID", "").strip():
        return _slurm_command(_scheduler_target(command), nproc, nnodes, env)
    if env.get("PBS_JOBID", "").strip():
        return _pbs_command(_scheduler_target(command), nproc, nnodes, env)
    return _local_command(command, nproc, nnodes, env)


def _scheduler_target(command: Sequence[str]) -> list[str]:
    """What srun/mpiexec start on each rank: Python commands run unbuffered under this Python."""
    python = _python_args(command)
    return [sys.executable, "-u", *python] if python is not None else list(command)


def _terminal_sent(signum: int) -> bool:
    """Whether a SIGINT came from the terminal, which already sent it to the child as well.

    Forwarding it again would double-interrupt: torchrun would abort its own clean-up, and two
    quick Ctrl-Cs make srun kill the step without a grace period.
    """
    if signum != signal.SIGINT or not hasattr(os, "tcgetpgrp"):
        return False
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            continue
    return False


def run_command(argv: Sequence[str]) -> int:
    """Run `argv`, forwarding SIGINT/SIGTERM to it; its exit status (128+N if killed by N)."""
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if _terminal_sent(signum):
            return
        if child is None:
            pending.append(signum)
        elif child.poll() is None:
            child.send_signal(signum)

    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, forward) for sig in handled}
    try:
        try:
            child = subprocess.Popen(list(argv))
        except FileNotFoundError:
            raise ConfigError(f"{argv[0]!r} was not found on PATH") from None
        except PermissionError:
            raise ConfigError(f"{argv[0]!r} is not executable") from None
        for signum in pending:
            child.send_signal(signum)
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


def _handle(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    argv = build_command(command, args.nproc, args.nnodes)
    if args.dry_run:
        print(shlex.join(argv))
        return 0
    print(f"ezpz: launching {shlex.join(argv)}", file=sys.stderr, flush=True)
    return run_command(argv)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ezpz launch`` to the CLI's subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "launch",
        help="run a command on every accelerator (torchrun, srun or mpiexec)",
        description="Start COMMAND once per process: torchrun locally, srun under Slurm, "
        "mpiexec under PBS. `ezpz ...` and Python scripts run under this Python.",
        epilog=_USAGE_HINT,
    )
    parser.add_argument("-n", "--nproc", type=int, metavar="N",
                        help="processes per node (default: accelerators per node, 1 on CPU)")
    parser.add_argument("--nnodes", type=int, metavar="M",
                        help="nodes (default: the job's nodes under a scheduler, else 1)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the command, shell-quoted, and exit")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                        help="what to run, after --")
    parser.set_defaults(handler=_handle)
    return parser
