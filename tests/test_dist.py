"""Tests for ezpz_core.dist: launcher detection, devices, host lists and real gloo rendezvous."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ezpz_core import dist
from ezpz_core.dist import DistEnv, dist_env, expand_hostlist, rendezvous_env
from ezpz_core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT_S = 120

_PREFIXES = ("SLURM_", "OMPI_", "PMI_", "PMIX_", "PALS_", "MPI_LOCAL", "PBS_", "TORCHELASTIC_")
_NAMES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCH_DEVICE",
    "TORCH_BACKEND",
)


def _launch_free(environ: dict[str, str]) -> dict[str, str]:
    """A copy of `environ` without any launcher, scheduler or rendezvous variable."""
    return {
        key: value
        for key, value in environ.items()
        if key not in _NAMES and not key.startswith(_PREFIXES)
    }


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run each test as if outside any launcher, and undo whatever setup_torch exported."""
    saved = dict(os.environ)
    for key in set(os.environ) - set(_launch_free(dict(os.environ))):
        monkeypatch.delenv(key)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child_env(**extra: str) -> dict[str, str]:
    env = _launch_free(dict(os.environ))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(TORCH_DEVICE="cpu", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


# --- launcher detection -------------------------------------------------------------------


def test_no_launcher_means_one_process() -> None:
    assert dist_env({}) == DistEnv(0, 0, 1, 1, "none")
    assert dist.detect_launcher() == "none"
    assert (dist.get_rank(), dist.get_world_size(), dist.get_local_rank()) == (0, 1, 0)
    assert (dist.get_local_world_size(), dist.get_node_index()) == (1, 0)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"},
            DistEnv(5, 1, 8, 4, "torchrun"),
        ),
        (
            {
                "OMPI_COMM_WORLD_RANK": "6",
                "OMPI_COMM_WORLD_SIZE": "12",
                "OMPI_COMM_WORLD_LOCAL_RANK": "2",
                "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
            },
            DistEnv(6, 2, 12, 4, "openmpi"),
        ),
        (
            {"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"},
            DistEnv(3, 1, 4, 2, "mpich"),
        ),
        (
            {"PMI_RANK": "7", "PMI_SIZE": "24", "PALS_LOCAL_RANKID": "1", "PALS_LOCAL_SIZE": "6"},
            DistEnv(7, 1, 24, 6, "mpich"),
        ),
        (
            {"PMI_RANK": "2", "PMI_SIZE": "4", "PMI_LOCAL_RANK": "0", "PMI_LOCAL_SIZE": "2"},
            DistEnv(2, 0, 4, 2, "mpich"),
        ),
        (
            {
                "PMIX_RANK": "3",
                "SLURM_NTASKS": "4",
                "SLURM_LOCALID": "1",
                "SLURM_TASKS_PER_NODE": "2(x2)",
            },
            DistEnv(3, 1, 4, 2, "pmix"),
        ),
        (
            {
                "SLURM_PROCID": "5",
                "SLURM_NTASKS": "8",
                "SLURM_LOCALID": "1",
                "SLURM_TASKS_PER_NODE": "4(x2)",
            },
            DistEnv(5, 1, 8, 4, "slurm"),
        ),
        (
            {
                "SLURM_PROCID": "2",
                "SLURM_NTASKS": "4",
                "SLURM_LOCALID": "0",
                "SLURM_NTASKS_PER_NODE": "2",
            },
            DistEnv(2, 0, 4, 2, "slurm"),
        ),
    ],
    ids=["torchrun", "openmpi", "intel-mpi", "pals", "pmi-local", "pmix", "slurm", "slurm-npn"],
)
def test_launcher_variables(environ: dict[str, str], expected: DistEnv) -> None:
    assert dist_env(environ) == expected
    assert dist.detect_launcher(environ) == expected.launcher


def test_slurm_uneven_tasks_per_node_uses_node_id() -> None:
    environ = {
        "SLURM_PROCID": "6",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "2",
        "SLURM_TASKS_PER_NODE": "3(x2),1",
    }
    env = dist_env(environ)
    assert (env.world_size, env.local_world_size) == (7, 1)


def test_slurm_step_counts_beat_job_counts() -> None:
    environ = {
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "8",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_TASKS_PER_NODE": "4(x2)",
        "SLURM_STEP_TASKS_PER_NODE": "2",
    }
    assert dist_env(environ) == DistEnv(1, 1, 2, 2, "slurm")


def test_missing_local_values_assume_one_node() -> None:
    env = dist_env({"RANK": "3", "WORLD_SIZE": "4"})
    assert (env.local_rank, env.local_world_size, env.node_index) == (3, 4, 0)


def test_getters_read_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "4(x2)")
    assert dist.detect_launcher() == "slurm"
    assert (dist.get_rank(), dist.get_world_size(), dist.get_world_size(in_use=True)) == (5, 8, 1)
    assert (dist.get_local_rank(), dist.get_local_world_size(), dist.get_node_index()) == (1, 4, 1)


def test_precedence_innermost_launcher_wins() -> None:
    environ = {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "OMPI_COMM_WORLD_RANK": "3",
        "OMPI_COMM_WORLD_SIZE": "4",
        "PMI_RANK": "5",
        "PMI_SIZE": "6",
        "PMIX_RANK": "7",
        "SLURM_PROCID": "8",
        "SLURM_NTASKS": "9",
    }
    order = [("RANK", "torchrun", 1), ("OMPI_COMM_WORLD_RANK", "openmpi", 3)]
    order += [("PMI_RANK", "mpich", 5), ("PMIX_RANK", "pmix", 7), ("SLURM_PROCID", "slurm", 8)]
    for variable, launcher, rank in order:
        assert dist.detect_launcher(environ) == launcher
        assert dist_env(environ).rank == rank
        del environ[variable]
    assert dist.detect_launcher(environ) == "none"


@pytest.mark.parametrize(
    ("environ", "needle"),
    [
        ({"RANK": "two", "WORLD_SIZE": "4"}, "RANK='two'"),
        ({"RANK": "4", "WORLD_SIZE": "4"}, "rank 4 of world size 4"),
        ({"PMIX_RANK": "3"}, "rank 3 of world size 1"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, "local"),
        ({"SLURM_PROCID": "0", "SLURM_TASKS_PER_NODE": "4(y2)"}, "tasks per node"),
    ],
)
def test_inconsistent_launch_is_a_one_line_error(environ: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        dist_env(environ)
    assert "\n" not in str(info.value)


# --- devices and backends -----------------------------------------------------------------


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend two CUDA devices exist so device selection can be tested on a CPU machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def _no_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_device_detection_order(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_accelerators(monkeypatch)
    assert dist.get_torch_device() == "cpu"
    assert dist.get_torch_backend() == "gloo"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert (dist.get_torch_device(), dist.get_torch_backend()) == ("mps", "gloo")
    monkeypatch.setattr(torch.xpu, "is_available", lambda: True)
    assert (dist.get_torch_device(), dist.get_torch_backend()) == ("xpu", "xccl")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (dist.get_torch_device(), dist.get_torch_backend()) == ("cuda", "nccl")


@pytest.mark.usefixtures("fake_cuda")
def test_torch_device_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_DEVICE", " CPU ")
    assert dist.get_torch_device() == "cpu"
    assert dist.get_device() == torch.device("cpu")
    monkeypatch.setenv("TORCH_DEVICE", "cuda:1")
    assert dist.get_torch_device() == "cuda:1"
    assert dist.get_device() == torch.device("cuda", 1)


@pytest.mark.usefixtures("fake_cuda")
def test_device_index_follows_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert dist.get_device() == torch.device("cuda", 1)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("gpu", "is not one of"),
        ("cuda0", "is not one of"),
        ("cuda:x", "is not one of"),
        ("cuda:2", "only 2 cuda devices"),
    ],
)
@pytest.mark.usefixtures("fake_cuda")
def test_bad_torch_device(monkeypatch: pytest.MonkeyPatch, value: str, needle: str) -> None:
    monkeypatch.setenv("TORCH_DEVICE", value)
    with pytest.raises(ConfigError, match=needle) as info:
        dist.get_torch_device()
    assert "\n" not in str(info.value)


def test_unavailable_torch_device(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_accelerators(monkeypatch)
    monkeypatch.setenv("TORCH_DEVICE", "cuda")
    with pytest.raises(ConfigError, match="cuda is not available"):
        dist.get_torch_device()


def test_torch_backend_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_DEVICE", "cpu")
    assert dist.get_torch_backend() == "gloo"
    monkeypatch.setenv("TORCH_BACKEND", "MPI")
    assert dist.get_torch_backend() == "mpi"
    monkeypatch.setenv("TORCH_BACKEND", "cpu:gloo,cuda:nccl")
    assert dist.get_torch_backend() == "cpu:gloo,cuda:nccl"
    monkeypatch.setenv("TORCH_BACKEND", "nccl gloo")
    with pytest.raises(ConfigError, match="TORCH_BACKEND='nccl gloo'"):
        dist.get_torch_backend()


@pytest.mark.parametrize(
    ("backend", "needle"), [("nccl", "needs a cuda device"), ("nope", "'nope' is not available")]
)
def test_setup_rejects_unusable_backend_before_rendezvous(
    monkeypatch: pytest.MonkeyPatch, backend: str, needle: str
) -> None:
    monkeypatch.setenv("TORCH_DEVICE", "cpu")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=needle) as info:
        dist.setup_torch(backend=backend, timeout_s=5)
    assert "\n" not in str(info.value)
    assert not torch.distributed.is_initialized()
    assert "MASTER_PORT" not in os.environ


def test_setup_rejects_bad_timeout() -> None:
    with pytest.raises(ConfigError, match="timeout_s"):
        dist.setup_torch(timeout_s=0)


# --- single process and an existing group -------------------------------------------------


def test_single_process_setup_creates_no_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_DEVICE", "cpu")
    assert dist.setup_torch(seed=3) == 0
    drawn = (random.random(), torch.rand(3))
    random.seed(3)
    torch.manual_seed(3)
    assert drawn[0] == random.random()
    assert torch.equal(drawn[1], torch.rand(3))
    assert not torch.distributed.is_initialized()
    assert dist.get_world_size(in_use=True) == 1
    assert "MASTER_ADDR" not in os.environ
    dist.barrier()
    dist.cleanup()
    values = torch.tensor([1.0, 3.0])
    assert dist.all_reduce_mean(values) is values
    assert values.tolist() == [1.0, 3.0]
    with pytest.raises(TypeError, match="floating-point"):
        dist.all_reduce_mean(torch.tensor([1, 2]))


def test_initialised_group_wins_over_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TORCH_DEVICE", "cpu")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert dist.get_world_size(in_use=True) == 1
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        assert (dist.get_rank(), dist.get_world_size()) == (0, 1)
        assert dist.get_world_size(in_use=True) == 1
        assert dist.setup_torch() == 0
        assert dist.all_reduce_mean(torch.tensor([2.0])).tolist() == [2.0]
        dist.barrier()
    finally:
        dist.cleanup()
    assert not torch.distributed.is_initialized()
    assert (dist.get_rank(), dist.get_world_size()) == (1, 2)
    dist.cleanup()


# --- node lists and schedulers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "hosts"),
    [
        ("nid[001-003,007],gpu5", ["nid001", "nid002", "nid003", "nid007", "gpu5"]),
        ("node1", ["node1"]),
        ("a,b", ["a", "b"]),
        ("", []),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("n[08-10]", ["n08", "n09", "n10"]),
        ("r[1-2]-n[01,03]", ["r1-n01", "r1-n03", "r2-n01", "r2-n03"]),
        ("x1000c0s[6-7]b0n0,login", ["x1000c0s6b0n0", "x1000c0s7b0n0", "login"]),
    ],
)
def test_expand_hostlist(spec: str, hosts: list[str]) -> None:
    assert expand_hostlist(spec) == hosts


@pytest.mark.parametrize("spec", ["nid[1-2", "nid1]", "nid[3-1]", "nid[a-b]", "n[[1]]", "n[1-]"])
def test_bad_hostlist(spec: str) -> None:
    with pytest.raises(ConfigError, match="host list"):
        expand_hostlist(spec)


def test_nodelist_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert dist.get_nodelist() == [socket.gethostname()]
    nodefile = tmp_path / "nodes"
    nodefile.write_text("b.pbs\nb.pbs\na.pbs\n\nb.pbs\nc.pbs\n")
    monkeypatch.setenv("PBS_NODEFILE", str(nodefile))
    assert dist.get_nodelist() == ["b.pbs", "a.pbs", "c.pbs"]
    monkeypatch.setenv("SLURM_NODELIST", "old[1-2]")
    assert dist.get_nodelist() == ["old1", "old2"]
    monkeypatch.setenv("SLURM_JOB_NODELIST", "nid[009-010]")
    assert dist.get_nodelist() == ["nid009", "nid010"]


def test_unreadable_pbs_nodefile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PBS_NODEFILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="PBS_NODEFILE"):
        dist.get_nodelist()


def test_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    assert dist.get_scheduler() == "local"
    monkeypatch.setenv("PBS_JOBID", "42.server")
    assert dist.get_scheduler() == "pbs"
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert dist.get_scheduler() == "slurm"


def test_rendezvous_env_for_slurm() -> None:
    environ = {
        "SLURM_PROCID": "1",
        "SLURM_NTASKS": "4",
        "SLURM_LOCALID": "1",
        "SLURM_TASKS_PER_NODE": "2(x2)",
        "SLURM_JOB_ID": "123456",
        "SLURM_JOB_NODELIST": "nid[004-005]",
    }
    assert rendezvous_env(environ) == {
        "RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "nid004",
        "MASTER_PORT": str(29500 + 456),
    }
    environ["SLURM_STEP_NODELIST"] = "nid005"
    environ["MASTER_PORT"] = "31000"
    out = rendezvous_env(environ)
    assert out["MASTER_ADDR"] == "nid005"
    assert "MASTER_PORT" not in out


def test_rendezvous_env_other_launchers(tmp_path: Path) -> None:
    torchrun = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1234"}
    assert rendezvous_env(torchrun) == {}
    one_node = {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"}
    out = rendezvous_env(one_node)
    assert (out["MASTER_ADDR"], out["MASTER_PORT"]) == ("127.0.0.1", "29500")
    nodefile = tmp_path / "nodes"
    nodefile.write_text("x3\nx3\nx4\n")
    pbs = {
        "PMI_RANK": "2",
        "PMI_SIZE": "4",
        "PALS_LOCAL_RANKID": "0",
        "PALS_LOCAL_SIZE": "2",
        "PBS_JOBID": "4321.pbs01",
        "PBS_NODEFILE": str(nodefile),
    }
    out = rendezvous_env(pbs)
    assert (out["MASTER_ADDR"], out["MASTER_PORT"], out["RANK"]) == ("x3", str(29500 + 321), "2")
    many_nodes = {**one_node, "OMPI_COMM_WORLD_LOCAL_SIZE": "1"}
    with pytest.raises(ConfigError, match="set MASTER_ADDR"):
        rendezvous_env(many_nodes)


# --- import cost and real multi-process runs ----------------------------------------------


def test_import_does_not_import_torch() -> None:
    code = "import sys, ezpz_core.dist; print(sorted(m for m in sys.modules if 'torch' in m))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=True,
    )
    assert done.stdout.strip() == "[]"


WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from ezpz_core import dist

    out_dir, timeout_s = sys.argv[1], float(sys.argv[2])
    launcher = dist.detect_launcher()
    rank = dist.setup_torch(timeout_s=timeout_s, seed=0)
    assert dist.setup_torch() == rank
    value = torch.full((3,), float(rank + 1))
    dist.all_reduce_mean(value)
    dist.barrier()
    result = {
        "rank": rank,
        "get_rank": dist.get_rank(),
        "in_use": dist.get_world_size(in_use=True),
        "local_rank": dist.get_local_rank(),
        "launcher": launcher,
        "backend": torch.distributed.get_backend(),
        "value": value.tolist(),
        "env_rank": os.environ["RANK"],
        "master_addr": os.environ["MASTER_ADDR"],
    }
    dist.cleanup()
    result["after_cleanup"] = torch.distributed.is_initialized()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)
    """
)


def _results(out_dir: Path) -> list[dict[str, object]]:
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def _check_pair(results: list[dict[str, object]], launcher: str) -> None:
    for rank, result in enumerate(results):
        assert result["rank"] == result["get_rank"] == rank
        assert result["local_rank"] == rank
        assert result["env_rank"] == str(rank)
        assert result["in_use"] == 2
        assert result["launcher"] == launcher
        assert result["backend"] == "gloo"
        assert result["value"] == [1.5, 1.5, 1.5]
        assert result["after_cleanup"] is False


def test_torchrun_two_process_gloo(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    command += [str(script), str(tmp_path), "60"]
    done = subprocess.run(
        command, env=_child_env(), capture_output=True, text=True, timeout=CHILD_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _check_pair(_results(tmp_path), "torchrun")


def _spawn_slurm_tasks(
    script: Path, out_dir: Path, ranks: list[int], world: int, timeout_s: float
) -> list[subprocess.Popen[str]]:
    port = str(_free_port())
    procs = []
    for rank in ranks:
        env = _child_env(
            SLURM_PROCID=str(rank),
            SLURM_NTASKS=str(world),
            SLURM_LOCALID=str(rank),
            SLURM_NODEID="0",
            SLURM_TASKS_PER_NODE=str(world),
            SLURM_JOB_NODELIST="localhost",
            MASTER_PORT=port,
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(out_dir), str(timeout_s)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def _wait_all(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    """Wait for every child under the timeout, killing the rest if one hangs."""
    finished = []
    try:
        for proc in procs:
            output, _ = proc.communicate(timeout=CHILD_TIMEOUT_S)
            finished.append((proc.returncode, output))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return finished


def test_slurm_variables_rendezvous_without_torchrun(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    finished = _wait_all(_spawn_slurm_tasks(script, tmp_path, [0, 1], 2, 60))
    for code, output in finished:
        assert code == 0, output[-3000:]
    results = _results(tmp_path)
    _check_pair(results, "slurm")
    assert {result["master_addr"] for result in results} == {"localhost"}


def test_missing_peer_times_out(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    [(code, output)] = _wait_all(_spawn_slurm_tasks(script, tmp_path, [0], 2, 3))
    assert code != 0
    assert "1/2" in output or "imed out" in output, output[-3000:]
    assert not (tmp_path / "rank0.json").exists()
