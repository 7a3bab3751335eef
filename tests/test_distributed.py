"""Real 2-process gloo runs on CPU through `ezpz train --nproc 2` (torchrun underneath)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ezpz_core import checkpoint

GPT = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
       "--eval-batches", "2", "--eval-every", "10", "--log-every", "5", "--quiet"]
SLOW = """
import time
import ezpz

@ezpz.hookimpl
def on_step_end(step):
    time.sleep(0.05)
"""
RAISES = """
import ezpz

@ezpz.hookimpl
def on_step_end(trainer, step):
    if trainer.rank == 1 and step == 3:
        raise RuntimeError("rank one exploded")
"""


def ezpz(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ezpz_core.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def weights(out: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    found = (out / "checkpoints" / checkpoint.step_name(step) if step is not None
             else checkpoint.resolve("latest", out))
    assert found is not None
    return checkpoint.load(found)["model"]


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float) -> None:
    """All weights as one vector agree to ``rtol`` relative (L2). Per tensor, biases that
    start at zero would turn float reduction-order noise into large relative errors."""
    assert a.keys() == b.keys()
    first = torch.cat([a[k].flatten().double() for k in a])
    second = torch.cat([b[k].flatten().double() for k in a])
    diff = ((first - second).norm() / first.norm()).item()
    assert diff <= rtol, f"weights differ by {diff:.2e} relative"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "verse.txt"
    path.write_text("Shall I compare thee to a summer's day? Thou art more lovely.\n" * 40)
    return path


def test_ddp_mnist_matches_one_process_with_the_same_global_batch(mnist_dir, tmp_path):
    common = ["train", "mnist", "--data-dir", str(mnist_dir), "--epochs", "1", "--dropout1",
              "0", "--dropout2", "0", "--quiet"]
    one = ezpz(*common, "--batch-size", "32", "--out-dir", str(tmp_path / "one"), cwd=tmp_path)
    two = ezpz(*common, "--batch-size", "16", "--nproc", "2", "--out-dir",
               str(tmp_path / "two"), cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert_close(weights(tmp_path / "one"), weights(tmp_path / "two"), rtol=1e-5)
    assert two.stdout.count("finished mnist") == 1  # rank 0 alone reports


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_gpt_two_ranks_match_one_process_and_resume_anywhere(strategy, corpus, tmp_path):
    data = ["train", "gpt", "--data", str(corpus), *GPT, "--max-steps", "20"]
    one = ezpz(*data, "--batch-size", "8", "--out-dir", str(tmp_path / "one"), cwd=tmp_path)
    two = ezpz(*data, "--batch-size", "4", "--nproc", "2", "--strategy", strategy,
               "--out-dir", str(tmp_path / "two"), cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert_close(weights(tmp_path / "one", 20), weights(tmp_path / "two", 20), rtol=1e-5)
    # The 2-rank checkpoint continues in a single process.
    more = ezpz("train", "gpt", "--data", str(corpus), *GPT, "--max-steps", "25",
                "--batch-size", "8", "--out-dir", str(tmp_path / "two"), "--resume",
                cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert (tmp_path / "two" / "checkpoints" / "step-00000025").is_dir()


def test_two_rank_run_stopped_by_sigterm_resumes_exactly(corpus, install_plugin, tmp_path):
    install_plugin("ezpz-slow", "1.0", {"slow": "slow_plugin"}, {"slow_plugin": SLOW})
    args = ["train", "gpt", "--data", str(corpus), *GPT, "--max-steps", "40", "--dropout",
            "0.2", "--batch-size", "4", "--nproc", "2", "--checkpoint-every", "7"]
    reference = ezpz(*args, "--out-dir", str(tmp_path / "ref"), cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "stopped"
    process = subprocess.Popen([sys.executable, "-m", "ezpz_core.cli", *args, "--out-dir",
                                str(out)], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert stderr.count("stopped by SIGTERM") == 1, stderr
    stopped = checkpoint.resolve("latest", out)
    assert stopped is not None and checkpoint.load(stopped)["progress"]["step"] < 40

    resumed = ezpz(*args, "--out-dir", str(out), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    ref, got = weights(tmp_path / "ref"), weights(out)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_a_rank_that_raises_ends_the_whole_job_with_its_error(corpus, install_plugin, tmp_path):
    install_plugin("ezpz-raises", "1.0", {"raises": "raises_plugin"}, {"raises_plugin": RAISES})
    started = time.monotonic()
    done = ezpz("train", "gpt", "--data", str(corpus), *GPT, "--max-steps", "200",
                "--batch-size", "4", "--nproc", "2", "--dist-timeout", "60",
                "--out-dir", str(tmp_path / "run"), cwd=tmp_path, timeout=180)
    took = time.monotonic() - started
    assert done.returncode != 0
    assert "rank one exploded" in done.stderr
    print(f"job ended {took:.1f}s after start")  # how fast is a benchmark's business
