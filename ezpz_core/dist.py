"""Distributed helpers: who this process is, how many there are, and how they meet.

Launcher detection reads environment variables only, so the CLI can ask "am I rank 0?" without
importing torch or any MPI package. torch is imported lazily inside the functions that need it,
and nothing here creates a process group until `setup_torch` is called.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from ezpz_core.errors import ConfigError
from ezpz_core.rng import seed_everything

if TYPE_CHECKING:
    import torch

__all__ = [
    "DistEnv",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "cleanup",
    "detect_launcher",
    "dist_env",
    "expand_hostlist",
    "get_device",
    "get_local_rank",
    "get_local_world_size",
    "get_node_index",
    "get_nodelist",
    "get_rank",
    "get_scheduler",
    "get_torch_backend",
    "get_torch_device",
    "get_world_size",
    "rendezvous_env",
    "setup_torch",
]

DEFAULT_MASTER_PORT = 29500
"""Base rendezvous port; launches without MASTER_PORT use this plus (job id mod 1000)."""

_DEFAULT_BACKENDS: dict[str, str] = {"cuda": "nccl", "xpu": "xccl", "mps": "gloo", "cpu": "gloo"}
_BACKEND_DEVICE: dict[str, str] = {"nccl": "cuda", "xccl": "xpu"}
_DEVICE_RE = re.compile(r"(cuda|xpu|mps|cpu)(?::(\d+))?")
_BACKEND_RE = re.compile(r"(?:[a-z]+:)?[a-z][a-z0-9_]*")
_TASKS_PER_NODE_RE = re.compile(r"(\d+)(?:\(x(\d+)\))?")

# Slurm step-level counts come first: a step smaller than the allocation must not wait for
# tasks that were never started.
_SLURM_SIZE = ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")
_SLURM_TASKS_PER_NODE = (
    "SLURM_STEP_TASKS_PER_NODE",
    "SLURM_NTASKS_PER_NODE",
    "SLURM_TASKS_PER_NODE",
)


@dataclass(frozen=True)
class _Launcher:
    """The variables one launcher uses, each tuple tried in order."""

    name: str
    rank: tuple[str, ...]
    size: tuple[str, ...]
    local_rank: tuple[str, ...]
    local_size: tuple[str, ...]


# Order is precedence: torchrun may run under srun or mpirun, and MPI may run under Slurm,
# so the innermost launcher (the one that actually started this process) is checked first.
_LAUNCHERS: tuple[_Launcher, ...] = (
    _Launcher("torchrun", ("RANK",), ("WORLD_SIZE",), ("LOCAL_RANK",), ("LOCAL_WORLD_SIZE",)),
    _Launcher(
        "openmpi",
        ("OMPI_COMM_WORLD_RANK",),
        ("OMPI_COMM_WORLD_SIZE",),
        ("OMPI_COMM_WORLD_LOCAL_RANK",),
        ("OMPI_COMM_WORLD_LOCAL_SIZE",),
    ),
    _Launcher(
        "mpich",
        ("PMI_RANK",),
        ("PMI_SIZE",),
        ("MPI_LOCALRANKID", "PALS_LOCAL_RANKID", "PMI_LOCAL_RANK"),
        ("MPI_LOCALNRANKS", "PALS_LOCAL_SIZE", "PMI_LOCAL_SIZE"),
    ),
    # PMIx exports only the rank; under srun --mpi=pmix the rest comes from Slurm.
    _Launcher("pmix", ("PMIX_RANK",), _SLURM_SIZE, ("SLURM_LOCALID",), ()),
    _Launcher("slurm", ("SLURM_PROCID",), _SLURM_SIZE, ("SLURM_LOCALID",), ()),
)


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job, as the launcher described it."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    launcher: str = "none"

    @property
    def node_index(self) -> int:
        """Index of this node, assuming ranks are laid out node by node."""
        return self.rank // self.local_world_size


def _first(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    """Return (name, value) of the first non-empty variable among `names`."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def _first_int(environ: Mapping[str, str], names: tuple[str, ...]) -> int | None:
    """Parse the first set variable among `names` as an int, with a one-line error if it is not."""
    found = _first(environ, names)
    if found is None:
        return None
    name, value = found
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer") from None


def _parse_tasks_per_node(value: str) -> list[int]:
    """Expand Slurm's per-node task counts: ``2(x3),1`` -> ``[2, 2, 2, 1]``."""
    counts: list[int] = []
    for item in value.split(","):
        match = _TASKS_PER_NODE_RE.fullmatch(item.strip())
        if match is None:
            raise ConfigError(f"cannot parse Slurm tasks per node {value!r}")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


def _slurm_tasks_per_node(environ: Mapping[str, str]) -> list[int] | None:
    found = _first(environ, _SLURM_TASKS_PER_NODE)
    return None if found is None else _parse_tasks_per_node(found[1])


def _slurm_local_size(environ: Mapping[str, str]) -> int | None:
    """Tasks on this node; uneven counts are indexed by SLURM_NODEID."""
    counts = _slurm_tasks_per_node(environ)
    if not counts:
        return None
    if len(set(counts)) == 1:
        return counts[0]
    node = _first_int(environ, ("SLURM_NODEID",)) or 0
    return counts[node] if 0 <= node < len(counts) else counts[0]


def detect_launcher(environ: Mapping[str, str] | None = None) -> str:
    """Name the launcher that started this process: the first one whose rank variable is set."""
    env = os.environ if environ is None else environ
    for launcher in _LAUNCHERS:
        if _first(env, launcher.rank) is not None:
            return launcher.name
    return "none"


def dist_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read rank and sizes from the launcher's variables (``os.environ`` unless given).

    Missing local values assume a single node (local = global), which is right for the usual
    laptop and one-node launches; launchers used across nodes all export their local values.
    """
    env = os.environ if environ is None else environ
    name = detect_launcher(env)
    if name == "none":
        return DistEnv()
    spec = next(launcher for launcher in _LAUNCHERS if launcher.name == name)
    slurmish = name in ("pmix", "slurm")
    rank = _first_int(env, spec.rank) or 0
    world = _first_int(env, spec.size)
    if world is None and slurmish:
        counts = _slurm_tasks_per_node(env)
        world = sum(counts) if counts else None
    world = 1 if world is None else world
    local_rank = _first_int(env, spec.local_rank)
    local_size = _first_int(env, spec.local_size)
    if local_size is None and slurmish:
        local_size = _slurm_local_size(env)
    if local_size is None:
        local_size = world
    if local_rank is None:
        local_rank = rank % local_size if local_size > 0 else rank
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(
            f"{name} launch gives rank {rank} of world size {world}; check its variables"
        )
    if local_size < 1 or not 0 <= local_rank < local_size:
        raise ConfigError(
            f"{name} launch gives local rank {local_rank} of local size {local_size}; "
            "check its variables"
        )
    return DistEnv(rank, local_rank, world, local_size, name)


def _initialised_dist() -> ModuleType | None:
    """torch.distributed if a default group exists, without importing torch when nobody has."""
    tdist = sys.modules.get("torch.distributed")
    if tdist is None or not tdist.is_available() or not tdist.is_initialized():
        return None
    return tdist


def get_rank() -> int:
    """Global rank: the process group's when one exists, else the launcher's."""
    tdist = _initialised_dist()
    return int(tdist.get_rank()) if tdist is not None else dist_env().rank


def get_world_size(in_use: bool = False) -> int:
    """Number of processes; ``in_use=True`` counts only an initialised group (1 without one)."""
    tdist = _initialised_dist()
    if tdist is not None:
        return int(tdist.get_world_size())
    return 1 if in_use else dist_env().world_size


def get_local_rank() -> int:
    """Rank among the processes on this node; selects this process's accelerator."""
    return dist_env().local_rank


def get_local_world_size() -> int:
    """Number of processes on this node."""
    return dist_env().local_world_size


def get_node_index() -> int:
    """Index of this node, assuming ranks are laid out node by node."""
    return get_rank() // get_local_world_size()


def _device_count(torch_mod: ModuleType, kind: str) -> int:
    if kind == "cuda":
        return int(torch_mod.cuda.device_count())
    if kind == "xpu":
        return int(torch_mod.xpu.device_count())
    return 1


def _available(torch_mod: ModuleType, kind: str) -> bool:
    if kind == "cuda":
        return bool(torch_mod.cuda.is_available())
    if kind == "xpu":
        xpu = getattr(torch_mod, "xpu", None)
        return xpu is not None and bool(xpu.is_available())
    if kind == "mps":
        mps = getattr(torch_mod.backends, "mps", None)
        return mps is not None and bool(mps.is_available())
    return kind == "cpu"


def get_torch_device() -> str:
    """Device kind to train on: ``TORCH_DEVICE`` if set (checked), else the best one available."""
    import torch

    override = os.environ.get("TORCH_DEVICE", "").strip()
    if not override:
        for kind in ("cuda", "xpu", "mps"):
            if _available(torch, kind):
                return kind
        return "cpu"
    value = override.lower()
    match = _DEVICE_RE.fullmatch(value)
    if match is None:
        raise ConfigError(
            f"TORCH_DEVICE={override!r} is not one of cuda, xpu, mps, cpu (optionally :N)"
        )
    kind, index = match.group(1), match.group(2)
    if not _available(torch, kind):
        raise ConfigError(f"TORCH_DEVICE={override!r} but {kind} is not available on this machine")
    if index is not None and kind != "cpu" and int(index) >= _device_count(torch, kind):
        raise ConfigError(
            f"TORCH_DEVICE={override!r} but only {_device_count(torch, kind)} {kind} devices exist"
        )
    return value


def get_device() -> torch.device:
    """This process's device; cuda/xpu pick local rank modulo the visible device count."""
    import torch

    kind, _, index = get_torch_device().partition(":")
    if index:
        return torch.device(kind, int(index))
    if kind in ("cuda", "xpu"):
        return torch.device(kind, get_local_rank() % max(_device_count(torch, kind), 1))
    return torch.device(kind)


def _normalise_backend(value: str, source: str) -> str:
    """Lower-case and syntax-check a backend such as ``gloo`` or ``cpu:gloo,cuda:nccl``."""
    backend = value.strip().lower()
    parts = backend.split(",")
    if not backend or not all(_BACKEND_RE.fullmatch(part) for part in parts):
        raise ConfigError(
            f"{source}={value!r} is not a backend such as nccl, gloo, xccl or cpu:gloo,cuda:nccl"
        )
    return backend


def _backend_names(backend: str) -> list[str]:
    return [part.rpartition(":")[2] for part in backend.split(",")]


def get_torch_backend() -> str:
    """Collective backend: ``TORCH_BACKEND`` if set, else the usual one for the device."""
    override = os.environ.get("TORCH_BACKEND", "").strip()
    if override:
        return _normalise_backend(override, "TORCH_BACKEND")
    return _DEFAULT_BACKENDS[get_torch_device().partition(":")[0]]


def get_scheduler() -> str:
    """The batch system this job runs under, if any."""
    if os.environ.get("SLURM_JOB_ID"):
        return "slurm"
    if os.environ.get("PBS_JOBID"):
        return "pbs"
    return "local"


def _expand_item(item: str, spec: str) -> list[str]:
    """Expand one host pattern, e.g. ``rack[1-2]-n[01,03]`` (bracket groups multiply out)."""
    names = [""]
    rest = item
    while rest:
        open_at = rest.find("[")
        if open_at < 0:
            if "]" in rest:
                raise ConfigError(f"unbalanced ']' in host list {spec!r}")
            return [name + rest for name in names]
        close_at = rest.find("]", open_at)
        if close_at < 0 or "[" in rest[open_at + 1 : close_at] or "]" in rest[:open_at]:
            raise ConfigError(f"unbalanced brackets in host list {spec!r}")
        values: list[str] = []
        for part in rest[open_at + 1 : close_at].split(","):
            lo, dash, hi = part.strip().partition("-")
            if not lo.isdigit() or (dash and not hi.isdigit()):
                raise ConfigError(f"bad range {part!r} in host list {spec!r}")
            if not dash:
                values.append(lo)
                continue
            if int(hi) < int(lo):
                raise ConfigError(f"descending range {part!r} in host list {spec!r}")
            values.extend(str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1))
        prefix = rest[:open_at]
        names = [name + prefix + value for name in names for value in values]
        rest = rest[close_at + 1 :]
    return names


def expand_hostlist(spec: str) -> list[str]:
    """Expand Slurm's compressed host list, e.g. ``nid[001-003,007],gpu5``; zero padding is kept."""
    items: list[str] = []
    depth = 0
    start = 0
    for pos, char in enumerate(spec):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(spec[start:pos])
            start = pos + 1
    items.append(spec[start:])
    hosts: list[str] = []
    for item in items:
        if item.strip():
            hosts.extend(_expand_item(item.strip(), spec))
    return hosts


def _read_nodefile(path: str) -> list[str]:
    """Unique host names from a PBS node file (it repeats a host once per slot), order kept."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle]
    except OSError as exc:
        raise ConfigError(f"PBS_NODEFILE={path!r} cannot be read: {exc.strerror}") from None
    return list(dict.fromkeys(line for line in lines if line))


def _scheduler_nodes(environ: Mapping[str, str], names: tuple[str, ...]) -> list[str] | None:
    """Nodes named by Slurm (first of `names` set) or PBS, or None outside a scheduler."""
    found = _first(environ, names)
    if found is not None:
        return expand_hostlist(found[1])
    nodefile = environ.get("PBS_NODEFILE", "").strip()
    if nodefile:
        return _read_nodefile(nodefile)
    return None


def get_nodelist() -> list[str]:
    """Hosts of this job: Slurm's node list, PBS's node file, else just this host."""
    nodes = _scheduler_nodes(os.environ, ("SLURM_JOB_NODELIST", "SLURM_NODELIST"))
    return nodes if nodes else [socket.gethostname()]


def _job_number(environ: Mapping[str, str]) -> int | None:
    """Numeric job id (PBS ids look like ``1234.server``), or None outside a scheduler."""
    for name in ("SLURM_JOB_ID", "PBS_JOBID"):
        match = re.match(r"\d+", environ.get(name, "").strip())
        if match:
            return int(match.group(0))
    return None


def rendezvous_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables `setup_torch` exports so ``env://`` rendezvous works without torchrun.

    RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE mirror the detected launcher (torchrun already
    sets them). MASTER_ADDR and MASTER_PORT are added only when unset: the address is the first
    node of the Slurm step/job or PBS node file, or 127.0.0.1 for a one-node launch; the port is
    ``29500 + job_id % 1000`` so concurrent jobs sharing a node rarely collide, and 29500 outside
    a scheduler. Set MASTER_PORT yourself if two jobs on one node collide. Once exported, these
    torchrun-style variables win, so `detect_launcher` then reports "torchrun" with the same values.
    """
    env = os.environ if environ is None else environ
    info = dist_env(env)
    out: dict[str, str] = {}
    if info.launcher != "torchrun":
        out.update(
            RANK=str(info.rank),
            WORLD_SIZE=str(info.world_size),
            LOCAL_RANK=str(info.local_rank),
            LOCAL_WORLD_SIZE=str(info.local_world_size),
        )
    if not env.get("MASTER_ADDR", "").strip():
        step_nodes = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
        nodes = _scheduler_nodes(env, step_nodes)
        if nodes:
            out["MASTER_ADDR"] = nodes[0]
        elif info.world_size == info.local_world_size:
            out["MASTER_ADDR"] = "127.0.0.1"
        else:
            raise ConfigError(
                f"{info.launcher} launch spans nodes but no node list was found; set MASTER_ADDR"
            )
    if not env.get("MASTER_PORT", "").strip():
        job = _job_number(env)
        out["MASTER_PORT"] = str(DEFAULT_MASTER_PORT + (job % 1000 if job is not None else 0))
    return out


def _check_backend(tdist: ModuleType, backend: str, device_kind: str) -> None:
    """Fail with one line before rendezvous rather than with a C++ traceback after it."""
    for name in _backend_names(backend):
        check = getattr(tdist, "is_backend_available", None)
        ok = bool(check(name)) if check is not None else name in tdist.Backend.backend_list
        if not ok:
            known = [b for b in tdist.Backend.backend_list if b not in ("undefined", "fake")]
            usable = [b for b in known if check is None or check(b)]
            raise ConfigError(
                f"backend {name!r} is not available in this torch build; use one of {usable}"
            )
    if "," not in backend and ":" not in backend:
        needs = _BACKEND_DEVICE.get(backend)
        if needs is not None and needs != device_kind:
            raise ConfigError(
                f"backend {backend!r} needs a {needs} device but this process uses {device_kind}; "
                "set TORCH_BACKEND or TORCH_DEVICE"
            )


def setup_torch(
    backend: str | None = None, timeout_s: float = 1800.0, seed: int | None = None
) -> int:
    """Join the job's default process group (only when there are several processes); return rank.

    The accelerator is bound before the group is created so NCCL/XCCL communicators land on
    this process's device, and the timeout makes a dead peer end the job instead of hanging it.
    Calling it again once a group exists changes nothing.
    """
    if timeout_s <= 0:
        raise ConfigError(f"timeout_s must be positive, got {timeout_s}")
    chosen = _normalise_backend(backend, "backend") if backend else get_torch_backend()
    info = dist_env()

    import torch
    import torch.distributed as tdist

    if seed is not None:
        # The same seed on every rank, so models built before wrapping start identical.
        seed_everything(seed)
    device = get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif device.type == "xpu":
        torch.xpu.set_device(device)
    if tdist.is_available() and tdist.is_initialized():
        return int(tdist.get_rank())
    if info.world_size == 1:
        return info.rank
    if not tdist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run a single process")
    _check_backend(tdist, chosen, device.type)
    os.environ.update(rendezvous_env())
    bind = device.type in ("cuda", "xpu") and bool({"nccl", "xccl"} & set(_backend_names(chosen)))
    tdist.init_process_group(
        backend=chosen,
        init_method="env://",
        rank=info.rank,
        world_size=info.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        device_id=device if bind else None,
    )
    return int(tdist.get_rank())


def cleanup() -> None:
    """Destroy the default group if any; no barrier, so a failed peer cannot block exit."""
    tdist = _initialised_dist()
    if tdist is not None:
        tdist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank; a no-op for single-process runs."""
    tdist = _initialised_dist()
    if tdist is not None:
        tdist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Replace `tensor` in place by its mean over ranks and return it; unchanged without a group.

    Integer tensors are refused even on one process, so code that works on a laptop does not
    start failing only when run distributed.
    """
    if not (tensor.is_floating_point() or tensor.is_complex()):
        raise TypeError(f"all_reduce_mean needs a floating-point tensor, got {tensor.dtype}")
    tdist = _initialised_dist()
    if tdist is None:
        return tensor
    size = tdist.get_world_size()
    if size > 1:
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
        tensor.div_(size)
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Replace `tensor` in place by its sum over ranks and return it; unchanged without a group."""
    tdist = _initialised_dist()
    if tdist is not None and tdist.get_world_size() > 1:
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
    return tensor
