"""``ezpz doctor``: what this process would train on, and the settings that commonly go wrong.

Distributed runs fail far from their cause: a MASTER_PORT left over from last week's job, a GPU
mask that hides half the node, a TORCH_DEVICE typo. The doctor reads the same variables as
`ezpz_core.dist` and names these problems in one place, before a job waits in a queue.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ezpz_core.errors import EzpzError

__all__ = ["add_parser", "collect", "env_warnings", "format_report"]

T = TypeVar("T")

# Variables a launcher or rendezvous sets, reported as found.
RANK_VARIABLES = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
    "MASTER_ADDR", "MASTER_PORT",
    "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
    "PMI_RANK", "PMI_SIZE", "PMI_LOCAL_RANK", "PMI_LOCAL_SIZE",
    "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "PALS_LOCAL_RANKID", "PALS_LOCAL_SIZE", "PMIX_RANK",
    "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE",
    "SLURM_STEP_NUM_TASKS", "SLURM_TASKS_PER_NODE",
)
SCHEDULER_VARIABLES = (
    "SLURM_JOB_ID", "SLURM_NNODES", "SLURM_JOB_NODELIST", "SLURM_GPUS_ON_NODE",
    "PBS_JOBID", "PBS_NODEFILE",
)
VISIBILITY_VARIABLES = (
    "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK",
    "ONEAPI_DEVICE_SELECTOR", "TORCH_DEVICE", "TORCH_BACKEND",
)


def _found(environ: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    return {name: environ[name] for name in names if name in environ}


def env_warnings(environ: Mapping[str, str]) -> list[str]:
    """Mistakes visible in the environment alone, one sentence each."""
    from ezpz_core.dist import detect_launcher, dist_env

    out: list[str] = []
    launcher = detect_launcher(environ)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if launcher == "none" and environ.get(name, "").strip():
            out.append(f"{name}={environ[name]} is set but no launcher was detected: probably "
                       "left over from an earlier job, and a later launch may rendezvous on "
                       f"it; unset {name}")
    has = {name: bool(environ.get(name, "").strip())
           for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    if has["RANK"] and not has["WORLD_SIZE"]:
        out.append(f"RANK={environ['RANK']} is set without WORLD_SIZE, so the world size is "
                   "taken as 1; set both or neither")
    if has["WORLD_SIZE"] and not has["RANK"]:
        out.append(f"WORLD_SIZE={environ['WORLD_SIZE']} is set without RANK, so no launcher "
                   "reads it; set both or neither")
    if has["LOCAL_RANK"] and not has["RANK"]:
        out.append(f"LOCAL_RANK={environ['LOCAL_RANK']} is set without RANK and is ignored")
    mask = environ.get("CUDA_VISIBLE_DEVICES")
    if mask is None:
        return out
    devices = [item for item in mask.split(",") if item.strip()]
    if not devices or devices[0].strip() == "-1":
        out.append(f"CUDA_VISIBLE_DEVICES={mask!r} hides every GPU")
        return out
    if launcher == "none":
        return out
    try:
        local = dist_env(environ).local_world_size
    except EzpzError:
        return out  # reported by collect() with the launcher's own message
    if len(devices) < local:
        shared = " (fine only if each task has its own mask, e.g. srun --gpus-per-task=1)"
        out.append(f"CUDA_VISIBLE_DEVICES={mask} lists {len(devices)} device(s) for {local} "
                   f"local ranks: ranks will share GPUs{shared if len(devices) == 1 else ''}")
    elif len(devices) > local:
        out.append(f"CUDA_VISIBLE_DEVICES={mask} lists {len(devices)} devices for {local} "
                   f"local rank(s): {len(devices) - local} will stay idle")
    return out


def _version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _accelerators(torch: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("cuda", "xpu"):
        module = getattr(torch, kind, None)
        available = module is not None and bool(module.is_available())
        out[kind] = {"available": available,
                     "count": int(module.device_count()) if module and available else 0,
                     "build": getattr(torch.version, kind, None)}
    mps = getattr(torch.backends, "mps", None)
    out["mps"] = {"available": bool(mps is not None and mps.is_available())}
    return out


def collect() -> dict[str, Any]:
    """Everything the doctor reports, as JSON-ready values; problems go into ``warnings``."""
    from ezpz_core import dist

    warnings: list[str] = []

    def attempt(fn: Callable[[], T], default: T) -> T:
        try:
            return fn()
        except EzpzError as error:
            warnings.append(str(error))
            return default

    report: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "ezpz": _version("ezpz"),
    }
    try:
        import torch
    except ImportError as error:
        warnings.append(f"torch cannot be imported: {error}")
        report.update(torch=None, device=None, backend=None, accelerators={})
    else:
        report.update(
            torch=torch.__version__,
            device=attempt(dist.get_torch_device, None),
            backend=attempt(dist.get_torch_backend, None),
            accelerators=_accelerators(torch),
        )
    report["launcher"] = dist.detect_launcher()
    info = attempt(dist.dist_env, None)
    report["rank"] = info.rank if info else None
    report["local_rank"] = info.local_rank if info else None
    report["world_size"] = info.world_size if info else None
    report["local_world_size"] = info.local_world_size if info else None
    report["rank_variables"] = _found(os.environ, RANK_VARIABLES)
    report["scheduler"] = dist.get_scheduler()
    report["scheduler_variables"] = _found(os.environ, SCHEDULER_VARIABLES)
    report["nodelist"] = attempt(dist.get_nodelist, [report["hostname"]])
    report["visibility"] = _found(os.environ, VISIBILITY_VARIABLES)
    no_plugins: list[dict[str, Any]] = []
    report["plugins"] = attempt(_plugins, no_plugins)
    warnings.extend(env_warnings(os.environ))
    warnings.extend(p["error"] for p in report["plugins"] if p["error"])
    report["warnings"] = list(dict.fromkeys(warnings))
    return report


def _plugins() -> list[dict[str, Any]]:
    from ezpz_core.plugins import Plugins

    keys = ("name", "distribution", "version", "builtin", "error")
    return [{key: row[key] for key in keys} for row in Plugins().describe()]


def _accelerator_line(accelerators: Mapping[str, Any]) -> str:
    parts = []
    for kind, state in accelerators.items():
        if not state["available"]:
            parts.append(f"{kind}: no")
        else:
            parts.append(f"{kind}: {state['count']}" if "count" in state else f"{kind}: yes")
    return ", ".join(parts) or "unknown (no torch)"


def _torch_line(report: Mapping[str, Any]) -> str:
    if report["torch"] is None:
        return "not importable"
    builds = [f"{kind} {state['build']}" for kind, state in report["accelerators"].items()
              if state.get("build")]
    return f"{report['torch']} ({', '.join(builds)})" if builds else str(report["torch"])


def _variables(values: Mapping[str, str]) -> str:
    return " ".join(f"{key}={value}" for key, value in values.items()) or "none"


def format_report(report: Mapping[str, Any]) -> str:
    """The human-readable report: aligned ``key  value`` lines, then the warnings."""
    nodes = report["nodelist"]
    if report["world_size"] is None:
        ranks = "unknown"
    else:
        ranks = (f"{report['rank']} of {report['world_size']} "
                 f"(local {report['local_rank']} of {report['local_world_size']})")
    plugins = [
        f"{p['name']} ({p['distribution'] or '-'} {p['version'] or '-'})"
        + (" BROKEN" if p["error"] else "")
        for p in report["plugins"]
    ]
    rows = [
        ("hostname", report["hostname"]),
        ("python", f"{report['python']} ({report['python_executable']})"),
        ("torch", _torch_line(report)),
        ("ezpz", report["ezpz"] or "not installed"),
        ("device", report["device"] or "unusable (see warnings)"),
        ("backend", report["backend"] or "unusable (see warnings)"),
        ("accelerators", _accelerator_line(report["accelerators"])),
        ("launcher", report["launcher"]),
        ("rank", ranks),
        ("rank variables", _variables(report["rank_variables"])),
        ("scheduler", report["scheduler"]),
        ("scheduler variables", _variables(report["scheduler_variables"])),
        ("nodes", f"{len(nodes)}: {', '.join(nodes)}"),
        ("visibility", _variables(report["visibility"])),
        ("plugins", ", ".join(plugins) or "none"),
    ]
    width = max(len(key) for key, _ in rows)
    lines = [f"{key.ljust(width)}  {value}" for key, value in rows]
    if report["warnings"]:
        lines.append("warnings:")
        lines.extend(f"  - {warning}" for warning in report["warnings"])
    else:
        lines.append("no problems found")
    return "\n".join(lines)


def _handle(args: argparse.Namespace) -> int:
    report = collect()
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ezpz doctor`` to the CLI's subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "doctor",
        help="show the device, launcher and job seen here; warn about mistakes",
        description="Report what a training run here would use and warn about settings that "
        "commonly break distributed runs. Exit status is 0 even with warnings.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=_handle)
    return parser
