"""The ezpz command end to end, in real subprocesses, on generated MNIST-format files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TYPO = "import ezpz\n\n@ezpz.hookimpl\ndef on_trian_end(trainer):\n    pass\n"


def ezpz(*args: str, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ezpz_core.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_train_mnist_end_to_end_writes_metrics_and_summary(mnist_dir, tmp_path):
    out = tmp_path / "run"
    done = ezpz("train", "mnist", "--data-dir", str(mnist_dir), "--epochs", "2",
                "--batch-size", "32", "--log-every", "4", "--out-dir", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "mnist" and summary["steps"] == 32
    assert summary["final"]["eval/accuracy"] > 0.5  # chance is 0.1 on these digits
    assert "eval/accuracy" in done.stdout and str(out) in done.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "train/loss" in r["metrics"]]
    assert steps == list(range(4, 33, 4))
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["model_config"]["data_dir"] == str(mnist_dir)
    # Not a terminal: progress is plain log lines, not carriage-return noise.
    assert "\r" not in done.stderr and "step 32/32" in done.stderr


def test_config_file_then_command_line_override(mnist_dir, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(f'[train]\nmax_steps = 3\nlr = 0.01\n[model]\ndata_dir = "{mnist_dir}"\n')
    out = tmp_path / "run"
    done = ezpz("train", "mnist", "--config", str(config), "--max-steps", "2", "--quiet",
                "--out-dir", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = json.loads((out / "config.json").read_text())["train"]
    assert written["max_steps"] == 2 and written["lr"] == 0.01
    assert "step " not in done.stderr  # --quiet silences progress


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "nope"], "unknown model 'nope' (available: "),
        (["train", "mnist", "--lr", "-1"], "[train] lr=-1.0 must be > 0"),
        (["train", "mnist", "--data-dir", "/no/such/dir"], "data dir not found: /no/such/dir"),
        (["train", "mnist", "--config", "CFG"], "unknown key 'learning_rate' in [train]"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    (tmp_path / "CFG").write_text("[train]\nlearning_rate = 0.1\n")
    done = ezpz(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"ezpz: error: {done.stderr.strip()[13:]}"]
    assert message in done.stderr


def test_a_plugin_with_a_misspelt_hook_stops_train_but_not_listing(install_plugin, tmp_path,
                                                                  mnist_dir):
    install_plugin("ezpz-typo", "2.0", {"typo": "typo_plugin"}, {"typo_plugin": TYPO})
    env = dict(os.environ)
    done = ezpz("train", "mnist", "--data-dir", str(mnist_dir), cwd=tmp_path, env=env)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "ezpz-typo 2.0" in line and "on_trian_end" in line and "--block typo" in line
    listing = ezpz("models", cwd=tmp_path, env=env)
    assert listing.returncode == 0 and "mnist" in listing.stdout
    assert "ezpz-typo" in listing.stderr
    blocked = ezpz("train", "mnist", "--data-dir", str(mnist_dir), "--max-steps", "1",
                   "--block", "typo", "--out-dir", str(tmp_path / "r"), cwd=tmp_path, env=env)
    assert blocked.returncode == 0, blocked.stderr


def test_listing_commands_and_version(tmp_path):
    models = ezpz("models", cwd=tmp_path)
    assert models.returncode == 0 and "mnist" in models.stdout
    plugins = json.loads(ezpz("plugins", "--all", "--json", cwd=tmp_path).stdout)
    by_name = {row["name"]: row for row in plugins}
    assert by_name["mnist"]["distribution"] == "ezpz"
    assert "build_model" in by_name["mnist"]["hooks"]
    assert "on_log" in by_name["history"]["hooks"]
    version = ezpz("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("ezpz ")
    for command in (["--help"], ["train", "--help"], ["train", "mnist", "--help"],
                    ["models", "--help"], ["plugins", "--help"]):
        shown = ezpz(*command, cwd=tmp_path)
        assert shown.returncode == 0 and "usage:" in shown.stdout, command
    assert "--data-dir" in ezpz("train", "mnist", "--help", cwd=tmp_path).stdout


def test_cli_listing_does_not_import_torch(tmp_path):
    code = ("import sys; from ezpz_core import cli; cli.main(['models']); "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "False"
