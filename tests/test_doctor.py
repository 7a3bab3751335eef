"""``ezpz doctor``: the report, its JSON form, and the warnings for common mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ezpz_core.doctor import env_warnings

SCHEDULER_PREFIXES = ("SLURM_", "PBS_", "OMPI_", "PMI_", "PALS_", "PMIX_", "MPI_LOCAL")
RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
              "MASTER_PORT", "TORCH_DEVICE", "TORCH_BACKEND", "CUDA_VISIBLE_DEVICES")


def doctor(*args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run ``ezpz doctor`` in a clean environment plus `extra`; never touches os.environ."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(SCHEDULER_PREFIXES) and k not in RENDEZVOUS}
    env.update(extra)
    return subprocess.run([sys.executable, "-m", "ezpz_core.cli", "doctor", *args], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def test_leftover_master_port_is_warned_about(tmp_path):
    done = doctor(cwd=tmp_path, MASTER_PORT="29511", TORCH_DEVICE="cpu")
    assert done.returncode == 0, done.stderr
    assert "launcher             none" in done.stdout
    warnings = done.stdout.split("warnings:\n", 1)[1]
    assert "MASTER_PORT=29511 is set but no launcher was detected" in warnings
    assert "unset MASTER_PORT" in warnings


def test_json_is_one_object_with_the_essentials(tmp_path):
    done = doctor("--json", cwd=tmp_path, TORCH_DEVICE="cpu", TORCH_BACKEND="gloo")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["device"] == "cpu" and report["backend"] == "gloo"
    assert report["launcher"] == "none" and report["world_size"] == 1
    assert report["scheduler"] == "local" and report["nodelist"] == [report["hostname"]]
    names = {plugin["name"] for plugin in report["plugins"]}
    assert {"mnist", "gpt"} <= names
    assert report["visibility"] == {"TORCH_DEVICE": "cpu", "TORCH_BACKEND": "gloo"}
    assert isinstance(report["warnings"], list)


def test_slurm_job_and_missing_device(tmp_path):
    done = doctor("--json", cwd=tmp_path, SLURM_JOB_ID="4242", SLURM_NNODES="3",
                  SLURM_JOB_NODELIST="nid[001-002],gpu7", TORCH_DEVICE="xpu:3")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["scheduler"] == "slurm"
    assert report["nodelist"] == ["nid001", "nid002", "gpu7"]
    assert report["scheduler_variables"]["SLURM_JOB_ID"] == "4242"
    assert report["device"] is None
    assert any(w.startswith("TORCH_DEVICE='xpu:3'") for w in report["warnings"])


def test_rank_variables_without_their_partners():
    assert any("RANK=1 is set without WORLD_SIZE" in w for w in env_warnings({"RANK": "1"}))
    assert any("WORLD_SIZE=4 is set without RANK" in w for w in env_warnings({"WORLD_SIZE": "4"}))
    assert any("LOCAL_RANK=0 is set without RANK" in w for w in env_warnings({"LOCAL_RANK": "0"}))
    assert env_warnings({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "n0"}) == []


def test_gpu_mask_against_local_ranks():
    torchrun = {"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "4"}
    [fewer] = env_warnings({**torchrun, "CUDA_VISIBLE_DEVICES": "0,1"})
    assert "lists 2 device(s) for 4 local ranks: ranks will share GPUs" in fewer
    [more] = env_warnings({**torchrun, "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5"})
    assert "2 will stay idle" in more
    assert env_warnings({**torchrun, "CUDA_VISIBLE_DEVICES": "0,1,2,3"}) == []
    # One process may see many GPUs; an empty mask hides them all.
    assert env_warnings({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}) == []
    assert env_warnings({"CUDA_VISIBLE_DEVICES": ""}) == ["CUDA_VISIBLE_DEVICES='' hides every GPU"]


def test_broken_plugin_is_listed_and_warned(install_plugin, tmp_path):
    install_plugin("ezpz-broken", "0.3", {"broken": "broken_plugin"},
                   {"broken_plugin": "raise RuntimeError('boom')\n"})
    done = doctor("--json", cwd=tmp_path, TORCH_DEVICE="cpu")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    [broken] = [p for p in report["plugins"] if p["name"] == "broken"]
    assert broken["version"] == "0.3" and "boom" in broken["error"]
    assert any("ezpz-broken 0.3" in w and "--block broken" in w for w in report["warnings"])
