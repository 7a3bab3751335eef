"""Checkpoints that lose nothing: exact resume after SIGTERM and kill -9, safe loading."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from ezpz_core import checkpoint

SLOW = """
import time
import ezpz

@ezpz.hookimpl
def on_step_end(step):
    time.sleep(0.03)  # keeps the run long enough to be interrupted at a random step
"""
MNIST = ["--epochs", "3", "--batch-size", "32", "--log-every", "4", "--quiet"]
GPT = ["--max-steps", "40", "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
       "--block-size", "16", "--batch-size", "4", "--eval-batches", "2", "--eval-every", "10",
       "--dropout", "0.2", "--log-every", "5", "--quiet"]


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ezpz_core.cli", *args]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args), cwd=cwd, capture_output=True, text=True, timeout=300)


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    latest = checkpoint.resolve("latest", out)
    assert latest is not None, f"no checkpoint in {out}"
    return checkpoint.load(latest)["model"]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


@pytest.fixture
def slow_plugin(install_plugin):
    install_plugin("ezpz-slow", "1.0", {"slow": "slow_plugin"}, {"slow_plugin": SLOW})


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "verse.txt"
    path.write_text("Shall I compare thee to a summer's day? Thou art more lovely.\n" * 40)
    return path


def interrupt_after(args: list[str], cwd: Path, out: Path, sig: int, wait_for: int) -> int:
    """Start a run, wait until ``wait_for`` metrics records exist, send ``sig``."""
    process = subprocess.Popen(command(*args), cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    metrics = out / "metrics.jsonl"
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= wait_for:
            break
        time.sleep(0.02)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    interrupt_after.stderr = stderr  # type: ignore[attr-defined]
    return process.returncode


def test_sigterm_saves_exits_75_and_resume_matches_an_uninterrupted_mnist_run(
        slow_plugin, mnist_dir, tmp_path):
    data = ["--data-dir", str(mnist_dir), "--checkpoint-every", "5"]
    reference = tmp_path / "reference"
    done = run("train", "mnist", *data, *MNIST, "--out-dir", str(reference), cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    out = tmp_path / "interrupted"
    args = ["train", "mnist", *data, *MNIST, "--out-dir", str(out)]
    code = interrupt_after(args, tmp_path, out, signal.SIGTERM, wait_for=3)
    stderr = interrupt_after.stderr  # type: ignore[attr-defined]
    assert code == 75, stderr
    assert "stopped by SIGTERM at step" in stderr and "--resume" in stderr
    stopped_at = int(stderr.split("at step ")[1].split(";")[0])
    assert 0 < stopped_at < 48
    assert checkpoint.read_pointer(out / "checkpoints", "latest").name == \
        checkpoint.step_name(stopped_at)  # saved at the step it stopped, not the last periodic one

    resumed = run(*args, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same(final_weights(reference), final_weights(out))
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "train/loss" in r["metrics"]]
    assert steps == list(range(4, 49, 4))  # continued, not duplicated


def test_kill_9_at_ten_random_instants_then_resume_is_exact(slow_plugin, mnist_dir, tmp_path):
    data = ["--data-dir", str(mnist_dir), "--checkpoint-every", "1", "--keep-last", "2"]
    reference = tmp_path / "reference"
    assert run("train", "mnist", *data, *MNIST, "--out-dir", str(reference),
               cwd=tmp_path).returncode == 0

    out = tmp_path / "killed"
    args = ["train", "mnist", *data, *MNIST, "--out-dir", str(out), "--resume"]
    rng = random.Random(20261204)
    kills = 0
    for _ in range(10):
        process = subprocess.Popen(command(*args), cwd=tmp_path, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # wait out torch's import so the kill lands in training
        time.sleep(rng.uniform(0.0, 0.6))
        process.kill()
        process.wait(timeout=60)
        kills += process.returncode == -signal.SIGKILL
        latest = checkpoint.resolve("latest", out)
        if latest is not None:  # whatever instant it died at, the newest checkpoint loads
            assert checkpoint.load(latest)["progress"]["step"] >= 1
        assert not list((out / "checkpoints").glob(".*.tmp")) or latest is not None
    assert kills >= 8, "most kills should land while training"
    finished = run(*args, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert_same(final_weights(reference), final_weights(out))
    # Ten kills later the history has every logged step exactly once, as if never killed.
    from ezpz_core.runs import read_records

    def steps(run_dir: Path) -> list[tuple[int, bool]]:
        return [(r["step"], "train/loss" in r["metrics"])
                for r in read_records(run_dir / "metrics.jsonl")]

    assert steps(out) == steps(reference)


def test_background_writes_beside_forked_loader_workers_match_synchronous_saves(
        mnist_dir, tmp_path):
    """Each epoch forks DataLoader workers while the previous step's checkpoint is still being
    written by a thread; the run must neither hang nor save anything different."""
    data = ["--data-dir", str(mnist_dir), "--num-workers", "2", "--checkpoint-every", "1",
            "--keep-last", "1", "--epochs", "2", "--max-steps", "40"]
    for mode in ("--checkpoint-async", "--no-checkpoint-async"):
        done = run("train", "mnist", *data, *MNIST[2:], mode, "--out-dir",
                   str(tmp_path / mode), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    background = checkpoint.load(checkpoint.resolve("latest", tmp_path / "--checkpoint-async"))
    inline = checkpoint.load(checkpoint.resolve("latest", tmp_path / "--no-checkpoint-async"))
    assert background["progress"] == inline["progress"] == {"step": 32, "epoch": 2, "batch": 0}
    assert_same(background["model"], inline["model"])


def test_gpt_interrupted_and_resumed_matches_uninterrupted(corpus, slow_plugin, tmp_path):
    data = ["--data", str(corpus), "--checkpoint-every", "5"]
    reference = tmp_path / "reference"
    assert run("train", "gpt", *data, *GPT, "--out-dir", str(reference),
               cwd=tmp_path).returncode == 0
    out = tmp_path / "interrupted"
    args = ["train", "gpt", *data, *GPT, "--out-dir", str(out)]
    code = interrupt_after(args, tmp_path, out, signal.SIGKILL, wait_for=3)
    assert code == -signal.SIGKILL
    resumed = run(*args, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same(final_weights(reference), final_weights(out))


def test_a_malicious_pickle_is_refused_and_its_code_never_runs(tmp_path):
    witness = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {witness}",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": 1, "model": Evil()}, f)
    with pytest.raises(checkpoint.CheckpointError, match="refusing to load"):
        checkpoint.load(path)
    done = run("export", str(path), "--out", str(tmp_path / "w.pt"), cwd=tmp_path)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "refusing to load" in line and str(path) in line
    assert not witness.exists()


@pytest.fixture
def gpt_run(corpus, tmp_path) -> Path:
    out = tmp_path / "run"
    done = run("train", "gpt", "--data", str(corpus), *GPT, "--checkpoint-every", "10",
               "--keep-last", "3", "--out-dir", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return out


def test_layout_pointers_pruning_and_export(gpt_run, tmp_path):
    root = gpt_run / "checkpoints"
    names = sorted(p.name for p in root.iterdir())
    assert names == ["latest", "step-00000020", "step-00000030", "step-00000040"]
    assert all(checkpoint.is_complete(root / n) for n in names[1:])
    state = checkpoint.load(root / "step-00000040")
    assert state["progress"] == {"step": 40, "epoch": 0, "batch": 40}
    assert state["versions"]["torch"] == torch.__version__
    assert state["config"]["train"]["max_steps"] == 40
    assert {"python", "numpy", "torch"} <= set(state["rng"][0])  # one entry per rank

    done = run("export", str(gpt_run), "--out", str(tmp_path / "weights.pt"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    weights = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert_same(weights, state["model"])


def test_best_checkpoint_is_kept_beyond_keep_last(corpus, tmp_path):
    out = tmp_path / "run"
    done = run("train", "gpt", "--data", str(corpus), *GPT, "--checkpoint-every", "10",
               "--keep-last", "1", "--monitor", "eval/loss", "--monitor-mode", "max",
               "--out-dir", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    root = out / "checkpoints"
    best = checkpoint.read_pointer(root, "best")
    assert best is not None and best.name == "step-00000010"  # max eval/loss: the first eval
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000010", "step-00000040"]


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(gpt_run, tmp_path):
    root = gpt_run / "checkpoints"
    newest = root / "step-00000040" / "state.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.raises(checkpoint.CheckpointError, match="incomplete"):
        checkpoint.load(root / "step-00000040")
    assert checkpoint.resolve("latest", gpt_run).name == "step-00000030"
    (root / "step-00000040" / "complete.json").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="corrupt or truncated"):
        checkpoint.load(newest)


def test_a_checkpoint_of_another_model_is_refused_before_anything_changes(gpt_run, corpus,
                                                                          tmp_path):
    wider = [a if a != "32" else "64" for a in GPT]
    done = run("train", "gpt", "--data", str(corpus), *wider, "--out-dir", str(tmp_path / "b"),
               "--resume", str(gpt_run / "checkpoints" / "step-00000040"), cwd=tmp_path)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "does not fit this model" in line and "shape mismatch" in line and "wte.weight" in line


def test_a_failed_save_leaves_the_previous_checkpoint_intact(gpt_run, tmp_path):
    """A real EFBIG from the kernel (file size limit) stands in for a full disk."""
    script = tmp_path / "full_disk.py"
    script.write_text(textwrap.dedent(f"""
        import resource, signal
        from pathlib import Path
        from ezpz_core import checkpoint
        root = Path({str(gpt_run / "checkpoints")!r})
        state = checkpoint.load(root / "step-00000040")
        state["progress"]["step"] = 50
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            checkpoint.write(root, checkpoint.step_name(50), state)
        except checkpoint.CheckpointError as error:
            print(error)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert "could not save checkpoint" in done.stdout and "previous checkpoints are intact" \
        in done.stdout, done.stdout + done.stderr
    root = gpt_run / "checkpoints"
    assert not (root / "step-00000050").exists() and not list(root.glob(".*tmp"))
    assert checkpoint.resolve("latest", gpt_run).name == "step-00000040"
    checkpoint.load(root / "step-00000040")


def test_a_background_save_holds_its_own_step_while_training_runs_on(monkeypatch, tmp_path):
    """Each write is held back 0.3 s, so training is steps ahead of it (updating the very
    parameters in place): the checkpoint must still hold the weights of the step it names."""
    from conftest import toy_loaders, toy_model

    import ezpz
    from ezpz_core import checkpoint as files

    real_write = files.write

    def late_write(root: Path, name: str, state: dict) -> Path:
        time.sleep(0.3)
        return real_write(root, name, state)

    monkeypatch.setattr(files, "write", late_write)
    root = tmp_path / "run" / "checkpoints"

    class Watch:
        def __init__(self) -> None:
            self.weights: dict[int, dict[str, torch.Tensor]] = {}
            self.done_when_next_step_ended: dict[int, bool] = {}

        @ezpz.hookimpl(tryfirst=True)
        def on_step_end(self, trainer, step: int) -> None:
            self.weights[step] = {k: v.clone() for k, v in trainer.module.state_dict().items()}
            self.done_when_next_step_ended[step - 1] = (root / files.step_name(step - 1)).exists()

    watch = Watch()
    train, _ = toy_loaders(64, 8, 64)
    config = ezpz.TrainConfig(max_steps=5, checkpoint_every=1, keep_last=10, lr=0.1,
                              out_dir=str(tmp_path / "run"), device="cpu")
    ezpz.Trainer(toy_model(16), config, plugins=[watch]).fit(train)

    assert not any(watch.done_when_next_step_ended[s] for s in range(1, 5))  # did run ahead
    assert [p.name for p in files.complete(root)] == [files.step_name(s) for s in range(1, 6)]
    for step in range(1, 6):
        assert_same(files.load(root / files.step_name(step))["model"], watch.weights[step])


def test_a_background_write_that_fails_ends_the_run_and_keeps_the_previous_checkpoint(
        tmp_path):
    """A real EFBIG in the background writer: reported as one error by fit, nothing lost."""
    script = tmp_path / "full_disk_async.py"
    script.write_text(textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        import ezpz
        from conftest import toy_loaders, toy_model

        def fit(steps):
            config = ezpz.TrainConfig(max_steps=steps, checkpoint_every=1, lr=0.1,
                                      out_dir={str(tmp_path / "run")!r}, device="cpu")
            trainer = ezpz.Trainer(toy_model(256), config,
                                   block=["history", "tensorboard", "console"])
            return trainer.fit(toy_loaders(64, 8, 64)[0], resume="latest")

        fit(3)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE,
                           (16384, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            fit(6)
        except ezpz.CheckpointError as error:
            print("ERROR", error)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    [line] = [x for x in done.stdout.splitlines() if x.startswith("ERROR")] or [done.stderr]
    assert "could not save checkpoint" in line and "step-00000004" in line, line
    assert "previous checkpoints are intact" in line
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in checkpoint.complete(root)] == ["step-00000002", "step-00000003"]
    assert not list(root.glob(".*tmp")) and not (root / "step-00000004").exists()
    assert checkpoint.resolve("latest", tmp_path / "run").name == "step-00000003"
