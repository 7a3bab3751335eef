"""Console progress and logging: a rate-limited bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ezpz
from ezpz_core import cli, dist
from ezpz_core.errors import ConfigError
from ezpz_core.logs import configure_logging
from ezpz_plugins import console


def loader(n: int = 64) -> DataLoader:
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, (x.sum(dim=1) > 0).long()), batch_size=1)


class Slow:
    """Makes each step take a few milliseconds, like real training."""

    @ezpz.hookimpl
    def on_step_end(self) -> None:
        time.sleep(0.004)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def root_logging():
    """Leave the root logger as the test found it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_non_terminal_output_is_one_plain_line_per_logged_step(mnist_dir, tmp_path):
    out, log = tmp_path / "run", tmp_path / "train.log"
    with open(log, "w") as file:
        done = subprocess.run(
            [sys.executable, "-m", "ezpz_core.cli", "train", "mnist", "--data-dir",
             str(mnist_dir), "--max-steps", "6", "--batch-size", "16", "--log-every", "2",
             "--out-dir", str(out)],
            cwd=tmp_path, stdout=file, stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text and "\x1b[" not in text  # no carriage returns, no cursor codes
    progress = [line for line in text.splitlines() if " INFO step " in line]
    train = [line for line in progress if "| loss " in line]
    assert [re.search(r"step (\d+)/6 ", line).group(1) for line in train] == ["2", "4", "6"]
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d INFO step \d+/6 \| loss \S+ \| lr \S+ \| "
                            r"samples/s \S+", line) for line in train), train
    [evaluation] = [line for line in progress if "eval/" in line]
    assert "step 6/6 | eval/loss " in evaluation and "eval/accuracy" in evaluation
    assert "[rank" not in text  # a single process does not name its rank


def test_terminal_bar_redraws_a_few_times_a_second_not_every_step(monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    config = ezpz.TrainConfig(max_steps=64, log_every=16, lr=0.1)
    started = time.monotonic()
    ezpz.Trainer(nn.Linear(4, 2), config, plugins=[Slow()]).fit(loader())
    elapsed = time.monotonic() - started
    output = terminal.getvalue()
    draws = output.count("\r")
    assert 2 <= draws <= elapsed / console.REFRESH_S + 4, (draws, elapsed)  # not 64 draws
    final = output.split("\r")[-1]
    assert "64/64" in final and "loss=" in final and "lr=" in final and "samples/s=" in final


def test_only_rank_zero_shows_progress(monkeypatch, caplog):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    trainer = ezpz.Trainer(nn.Linear(4, 2), ezpz.TrainConfig(max_steps=8, log_every=2))
    trainer.rank = 1
    with caplog.at_level(logging.INFO, logger="ezpz"):
        trainer.fit(loader())
    assert terminal.getvalue() == "" and "step " not in caplog.text


def test_log_lines_name_the_rank_when_several_processes_run(monkeypatch, root_logging):
    # As under a launcher; conftest forbids leaving RANK/WORLD_SIZE set, so patch the reader.
    monkeypatch.setattr(dist, "get_rank", lambda: 2)
    monkeypatch.setattr(dist, "get_world_size", lambda in_use=False: 4)
    stream = io.StringIO()
    configure_logging(stream)
    logging.getLogger("ezpz").info("hello")
    assert re.fullmatch(r"\d\d:\d\d:\d\d \[rank 2\] INFO hello\n", stream.getvalue())


def test_log_level_comes_from_the_environment(monkeypatch, root_logging):
    monkeypatch.setenv("EZPZ_LOG_LEVEL", "warning")
    stream = io.StringIO()
    configure_logging(stream)
    configure_logging(stream)  # configuring again replaces, not duplicates, the handler
    logging.getLogger("ezpz").info("hidden")
    logging.getLogger("ezpz").warning("shown")
    assert stream.getvalue().endswith(" WARNING shown\n") and "hidden" not in stream.getvalue()
    assert stream.getvalue().count("shown") == 1
    monkeypatch.setenv("EZPZ_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError, match="EZPZ_LOG_LEVEL='LOUD' must be DEBUG, INFO"):
        configure_logging(stream)


def test_a_bad_log_level_is_one_line_and_exit_2(monkeypatch, capsys, root_logging):
    monkeypatch.setenv("EZPZ_LOG_LEVEL", "loud")
    assert cli.main(["models"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("ezpz: error: EZPZ_LOG_LEVEL=")


def test_log_lines_do_not_break_a_live_bar(monkeypatch, root_logging):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    configure_logging(terminal)

    class Talk:
        @ezpz.hookimpl
        def on_step_end(self, step: int) -> None:
            if step == 4:
                logging.getLogger("ezpz").warning("a message mid-run")

    ezpz.Trainer(nn.Linear(4, 2), ezpz.TrainConfig(max_steps=8, log_every=4),
                 plugins=[Talk()]).fit(loader())
    [line] = [ln for ln in terminal.getvalue().splitlines() if "a message mid-run" in ln]
    assert re.fullmatch(r"\r?\d\d:\d\d:\d\d WARNING a message mid-run", line.strip(" ")), line

