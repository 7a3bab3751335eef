"""``ezpz launch``: the commands it builds per scheduler, and real local launches under torchrun."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ezpz_core.errors import ConfigError
from ezpz_core.launch import build_command, run_command

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
LAUNCHER_PREFIXES = ("SLURM_", "PBS_", "OMPI_", "PMI_", "PALS_", "PMIX_", "MPI_LOCAL")
RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
              "MASTER_PORT", "TORCH_DEVICE", "TORCH_BACKEND")

ALL_REDUCE = """\
import sys
import torch
import torch.distributed as tdist
from ezpz_core import dist

rank = dist.setup_torch()
total = torch.tensor([float(rank + 1)])
tdist.all_reduce(total)
info = dist.dist_env()
with open(f"{sys.argv[1]}/rank{rank}.txt", "w") as handle:
    handle.write(f"{rank} {tdist.get_world_size()} {info.local_rank} {info.launcher} "
                 f"{total.item()}")
dist.cleanup()
"""

WAIT_FOR_TERM = """\
import pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1])

def stop(signum, frame):
    (out / "stopped").write_text(str(signum))
    sys.exit(7)

signal.signal(signal.SIGTERM, stop)
(out / "ready").write_text("1")
time.sleep(120)
"""


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any scheduler, launcher or rendezvous variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(LAUNCHER_PREFIXES) and k not in RENDEZVOUS}
    env["TORCH_DEVICE"] = "cpu"  # one process per CPU run unless -n says otherwise; gloo
    env.update(extra)
    return env


def ezpz(*args: str, env: dict[str, str], cwd: Path,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ezpz_core.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


# --- build_command -----------------------------------------------------------------------


def test_local_one_node_is_standalone_torchrun_running_the_script():
    assert build_command(["python", "train.py", "--lr", "3"], 2, None, {}) == [
        *TORCHRUN, "--nproc-per-node=2", "--standalone", "train.py", "--lr", "3"]
    assert build_command(["train.py"], 3, 1, {})[-2:] == ["--standalone", "train.py"]


def test_local_ezpz_module_and_other_commands():
    head = [*TORCHRUN, "--nproc-per-node=2", "--standalone"]
    assert build_command(["ezpz", "train", "gpt"], 2, None, {}) == [
        *head, "-m", "ezpz_core.cli", "train", "gpt"]
    assert build_command(["python3", "-m", "pkg.train", "-x"], 2, None, {}) == [
        *head, "-m", "pkg.train", "-x"]
    assert build_command(["./run.sh", "a"], 2, None, {}) == [*head, "--no-python", "./run.sh", "a"]


def test_local_default_is_one_process_on_cpu():
    env = {"TORCH_DEVICE": "cpu"}
    assert "--nproc-per-node=1" in build_command(["train.py"], None, None, env)


def test_local_several_nodes_meet_at_master_addr():
    env = {"MASTER_ADDR": "node0", "MASTER_PORT": "29999"}
    assert build_command(["train.py"], 4, 2, env) == [
        *TORCHRUN, "--nproc-per-node=4", "--nnodes=2", "--rdzv-backend=c10d",
        "--rdzv-endpoint=node0:29999", "train.py"]
    assert "--rdzv-endpoint=localhost:29500" in build_command(["train.py"], 1, 2, {})


def test_slurm_uses_the_allocation():
    env = {"SLURM_JOB_ID": "77", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "4",
           "SLURM_JOB_NODELIST": "nid[001-002]"}
    srun = ["srun", "--ntasks=8", "--nodes=2", "--ntasks-per-node=4", "--kill-on-bad-exit=1"]
    assert build_command(["ezpz", "train", "gpt"], None, None, env) == [
        *srun, sys.executable, "-u", "-m", "ezpz_core.cli", "train", "gpt"]
    assert build_command(["python", "t.py"], 2, 1, env) == [
        "srun", "--ntasks=2", "--nodes=1", "--ntasks-per-node=2", "--kill-on-bad-exit=1",
        sys.executable, "-u", "t.py"]
    assert build_command(["./a.out"], None, None, env)[-1] == "./a.out"


def test_slurm_defaults_to_gpus_per_node_and_counts_listed_nodes():
    env = {"SLURM_JOB_ID": "77", "SLURM_GPUS_PER_NODE": "a100:4",
           "SLURM_JOB_NODELIST": "gpu[1-3]"}
    assert build_command(["t.py"], None, None, env)[:4] == [
        "srun", "--ntasks=12", "--nodes=3", "--ntasks-per-node=4"]


def test_slurm_refuses_more_nodes_than_allocated():
    with pytest.raises(ConfigError, match="--nnodes 3 but Slurm job 77 has 2 node"):
        build_command(["t.py"], 1, 3, {"SLURM_JOB_ID": "77", "SLURM_NNODES": "2"})


def test_pbs_runs_mpiexec_over_the_unique_nodes(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("x1001\nx1001\nx1002\nx1002\n")
    env = {"PBS_JOBID": "123.server", "PBS_NODEFILE": str(nodefile)}
    assert build_command(["train.py", "--lr", "1"], 4, None, env) == [
        "mpiexec", "-n", "8", "--ppn", "4", "--hostfile", str(nodefile),
        sys.executable, "-u", "train.py", "--lr", "1"]
    assert build_command(["t.py"], 2, 1, env)[:5] == ["mpiexec", "-n", "2", "--ppn", "2"]
    with pytest.raises(ConfigError, match="lists 2 node"):
        build_command(["t.py"], 1, 3, env)
    with pytest.raises(ConfigError, match="has no PBS_NODEFILE"):
        build_command(["t.py"], 1, None, {"PBS_JOBID": "123.server"})


@pytest.mark.parametrize(
    ("command", "nproc", "nnodes", "message"),
    [([], 1, None, "no COMMAND"), (["t.py"], 0, None, "-n must be at least 1"),
     (["t.py"], 1, 0, "--nnodes must be at least 1")],
)
def test_bad_counts_and_missing_command(command, nproc, nnodes, message):
    with pytest.raises(ConfigError, match=message):
        build_command(command, nproc, nnodes, {})


# --- the command line --------------------------------------------------------------------


def test_dry_run_prints_one_shell_quoted_line(tmp_path):
    done = ezpz("launch", "-n", "2", "--dry-run", "--", "python", "my train.py", "--lr", "3",
                env=clean_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    expected = [*TORCHRUN, "--nproc-per-node=2", "--standalone", "my train.py", "--lr", "3"]
    assert done.stdout.splitlines() == [shlex.join(expected)]


def test_dry_run_under_slurm_and_pbs(tmp_path):
    slurm = clean_env(SLURM_JOB_ID="9", SLURM_NNODES="2", SLURM_NTASKS_PER_NODE="4",
                      SLURM_JOB_NODELIST="nid[001-002]")
    done = ezpz("launch", "--dry-run", "--", "ezpz", "train", "gpt", env=slurm, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert shlex.split(done.stdout) == [
        "srun", "--ntasks=8", "--nodes=2", "--ntasks-per-node=4", "--kill-on-bad-exit=1",
        sys.executable, "-u", "-m", "ezpz_core.cli", "train", "gpt"]
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("a\na\nb\nb\nc\nc\n")
    pbs = clean_env(PBS_JOBID="5.pbs", PBS_NODEFILE=str(nodefile))
    done = ezpz("launch", "-n", "2", "--dry-run", "--", "./app", "-x", env=pbs, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert shlex.split(done.stdout) == [
        "mpiexec", "-n", "6", "--ppn", "2", "--hostfile", str(nodefile), "./app", "-x"]


@pytest.mark.parametrize(
    ("args", "message"),
    [(["launch", "--dry-run"], "no COMMAND to launch"),
     (["launch", "-n", "0", "--", "t.py"], "-n must be at least 1"),
     (["launch", "-n", "1", "--", "t.py"], "'srun' was not found on PATH")],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    # Under (fake) Slurm nothing imports torch, and an empty PATH guarantees no real srun runs.
    (tmp_path / "empty").mkdir()
    env = clean_env(SLURM_JOB_ID="1", SLURM_NNODES="1", PATH=str(tmp_path / "empty"))
    done = ezpz(*args, env=env, cwd=tmp_path)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if not line.startswith("ezpz: launching")]
    assert lines == [lines[0]] and lines[0].startswith("ezpz: error: ") and message in lines[0]


def test_real_local_launch_all_reduces_over_two_ranks(tmp_path):
    (tmp_path / "job.py").write_text(ALL_REDUCE)
    # A leftover MASTER_PORT must not matter: torchrun hands the workers its own rendezvous.
    env = clean_env(MASTER_PORT="1")
    done = ezpz("launch", "-n", "2", "--", "python", "job.py", str(tmp_path), env=env,
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    results = sorted((tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1))
    assert results == [["0", "2", "0", "torchrun", "3.0"], ["1", "2", "1", "torchrun", "3.0"]]


def test_ezpz_commands_run_under_torchrun(tmp_path):
    done = ezpz("launch", "-n", "2", "--", "ezpz", "doctor", "--json", env=clean_env(),
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    reports, text = [], done.stdout.strip()
    while text:  # each rank prints one JSON object (under PIPE_BUF, so not interleaved)
        report, end = json.JSONDecoder().raw_decode(text)
        reports.append(report)
        text = text[end:].strip()
    seen = sorted((r["launcher"], r["rank"], r["world_size"]) for r in reports)
    assert seen == [("torchrun", 0, 2), ("torchrun", 1, 2)]


def test_sigterm_reaches_the_training_processes(tmp_path):
    (tmp_path / "wait.py").write_text(WAIT_FOR_TERM)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ezpz_core.cli", "launch", "-n", "1", "--", "python", "wait.py",
         str(tmp_path)], env=clean_env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not (tmp_path / "ready").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "worker never started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "stopped").read_text() == str(int(signal.SIGTERM))


def test_run_command_returns_the_child_status_and_restores_handlers():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    assert run_command([sys.executable, "-c", "raise SystemExit(5)"]) == 5
    killed = run_command([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"])
    assert killed == 128 + 9
    assert {sig: signal.getsignal(sig) for sig in before} == before
    with pytest.raises(ConfigError, match="was not found on PATH"):
        run_command(["/no/such/program"])
