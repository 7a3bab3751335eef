"""`ezpz train gpt` and `ezpz generate` end to end, in real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
        "--batch-size", "4", "--eval-batches", "4", "--log-every", "5", "--quiet"]


def ezpz(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ezpz_core.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    verse = "To be, or not to be, that is the question.\nWhether 'tis nobler in the mind.\n"
    path = tmp_path / "verse.txt"
    path.write_text(verse * 60)
    return path


def test_train_then_generate(corpus, tmp_path):
    out = tmp_path / "run"
    done = ezpz("train", "gpt", "--data", str(corpus), "--max-steps", "30", "--lr", "3e-3",
                "--warmup-steps", "5", "--eval-every", "15", *TINY, "--out-dir", str(out),
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 30
    assert summary["final"]["eval/loss"] < 2.5  # ln(vocab of ~30 chars) is 3.4 at the start
    assert summary["final"]["train/tokens_per_sec"] > 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/loss" in r["metrics"]] == [15, 30]

    def sample(seed: str) -> str:
        run = ezpz("generate", "--from", str(out), "--prompt", "To be", "--max-new-tokens",
                   "40", "--seed", seed, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        return run.stdout

    first = sample("1")
    assert first.startswith("To be") and len(first.rstrip("\n")) == len("To be") + 40
    assert sample("1") == first
    assert sample("2") != first
    # The final checkpoint holds the same weights as the run's final model file.
    final = out / "checkpoints" / "step-00000030"
    from_checkpoint = ezpz("generate", "--from", str(final), "--prompt", "To be",
                           "--max-new-tokens", "40", "--seed", "1", cwd=tmp_path)
    assert from_checkpoint.returncode == 0, from_checkpoint.stderr
    assert from_checkpoint.stdout == first


def test_default_corpus_is_the_standard_library(tmp_path):
    out = tmp_path / "run"
    done = ezpz("train", "gpt", "--max-steps", "2", *TINY, "--out-dir", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    assert tokenizer["kind"] == "char"
    assert {"d", "e", "f", "(", ":"} <= set("".join(tokenizer["chars"]))
    assert "standard-library" in ezpz("train", "gpt", "--help", cwd=tmp_path).stdout


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (lambda p: p.write_text(""), [], "empty"),
        (lambda p: p.write_bytes(b"\x00\x01\x02binary"), [], "binary"),
        (lambda p: p.write_text("short text"), [], "too short"),
        (lambda p: None, [], "does not exist"),
        (lambda p: p.write_text("x" * 500), ["--n-embd", "30", "--n-head", "4"],
         "n_embd=30 must be divisible by n_head=4"),
    ],
)
def test_bad_text_and_config_are_one_line_errors(setup, args, message, tmp_path):
    path = tmp_path / "data.txt"
    setup(path)
    done = ezpz("train", "gpt", "--data", str(path), "--max-steps", "1", *TINY[:-1], *args,
                "--out-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("ezpz: error: ") and message in line


def test_generate_from_something_that_is_not_a_run(tmp_path):
    done = ezpz("generate", "--from", str(tmp_path), "--prompt", "x", cwd=tmp_path)
    assert done.returncode == 2
    assert "is not a GPT run or checkpoint" in done.stderr
