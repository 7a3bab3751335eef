"""metrics.jsonl, samples.jsonl, summary.json, report.md and the curves' picture."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import Crash, toy_loaders, toy_model
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

import ezpz
from ezpz_core.runs import read_records, truncate_records
from ezpz_plugins import history


def loaders() -> tuple[DataLoader, DataLoader]:
    return toy_loaders(160, 8, 40)


def model() -> nn.Module:
    return toy_model(32)


class Recorder:
    """What every hook delivered, to compare the files against."""

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []
        self.texts: list[tuple[int, str]] = []

    @ezpz.hookimpl
    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.logged.append((step, dict(metrics)))

    @ezpz.hookimpl
    def on_eval_end(self, trainer, step: int) -> None:
        trainer.log_text("note", f"evaluated at step {step}")

    @ezpz.hookimpl
    def on_log_text(self, step: int, text: str) -> None:
        self.texts.append((step, text))



@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Recorder, ezpz.FitResult]:
    out = tmp_path_factory.mktemp("run")
    recorder = Recorder()
    config = ezpz.TrainConfig(max_steps=60, log_every=4, eval_every=10, lr=3e-2,
                              out_dir=str(out))
    result = ezpz.Trainer(model(), config, plugins=[recorder]).fit(*loaders())
    return out, recorder, result


def test_metrics_jsonl_holds_every_record_as_logged(run):
    out, recorder, _ = run
    records = read_records(out / "metrics.jsonl")
    assert [(r["step"], r["metrics"]) for r in records] == recorder.logged
    assert all(r["epoch"] == int(r["metrics"].get("train/epoch", r["epoch"])) for r in records)
    times = [r["time"] for r in records]
    assert times == sorted(times) and times[0] > 1e9  # wall-clock seconds


def test_samples_jsonl_holds_every_text_record(run):
    out, recorder, _ = run
    samples = read_records(out / "samples.jsonl")
    assert [(s["step"], s["text"]) for s in samples] == recorder.texts
    assert [s["step"] for s in samples] == [10, 20, 30, 40, 50, 60]
    assert {s["tag"] for s in samples} == {"note"}


def test_summary_has_final_and_best_metrics_time_throughput_memory(run):
    out, recorder, result = run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 60
    assert summary["model"] == "Sequential"
    assert summary["parameters"] == 8 * 32 + 32 + 32 * 3 + 3
    assert summary["final"] == pytest.approx(result.metrics)
    evals = [(s, m) for s, m in recorder.logged if "eval/loss" in m]
    best_loss = min(evals, key=lambda item: item[1]["eval/loss"])
    best_accuracy = max(evals, key=lambda item: item[1]["eval/accuracy"])
    assert summary["best"]["eval/loss"] == {"value": best_loss[1]["eval/loss"],
                                            "step": best_loss[0]}
    assert summary["best"]["eval/accuracy"] == {"value": best_accuracy[1]["eval/accuracy"],
                                                "step": best_accuracy[0]}
    rates = [m["train/samples_per_sec"] for _, m in recorder.logged if "train/loss" in m]
    assert summary["mean_throughput"]["train/samples_per_sec"] == pytest.approx(
        sum(rates) / len(rates))
    assert summary["elapsed_s"] >= result.elapsed_s > 0
    assert summary["peak_memory_mb"]["host"] > 10  # this process holds torch
    assert summary["peak_memory_mb"]["device"] is None  # CPU: no accelerator memory


def test_report_is_readable_and_links_the_picture(run):
    out, _, _ = run
    report = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert report.startswith("# Sequential: 60 steps")
    assert f"| parameters | {summary['parameters']:,} |" in report
    best = summary["best"]["eval/accuracy"]
    assert f"| eval/accuracy | {summary['final']['eval/accuracy']:.4g} | {best['value']:.4g} | " \
           f"{best['step']} |" in report
    assert "samples/s" in report and "MiB" in report
    assert "![loss and eval curves](curves.png)" in report


def _pixels_near(image: np.ndarray, color: str, tolerance: int = 24) -> int:
    rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image.astype(int) - rgb).max(axis=-1) <= tolerance).sum())


def test_the_picture_renders_the_loss_and_eval_curves(run):
    out, _, _ = run
    with Image.open(out / "curves.png") as png:
        assert png.format == "PNG"
        image = np.asarray(png.convert("RGB"))
    height, width, _ = image.shape
    assert width > height > 200
    # A legend entry alone is a few dozen pixels; a drawn curve across the axes is far more.
    assert _pixels_near(image, history.TRAIN_COLOR) > 600
    assert _pixels_near(image, history.EVAL_COLOR) > 600
    assert _pixels_near(image, history.OTHER_COLORS[0]) > 600  # eval/accuracy, second panel
    left, right = image[:, : width // 2], image[:, width // 2:]
    assert _pixels_near(left, history.EVAL_COLOR) > 600  # eval/loss beside train/loss
    assert _pixels_near(right, history.OTHER_COLORS[0]) > 600


def test_without_matplotlib_the_report_says_so_in_one_line(tmp_path, monkeypatch, caplog):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    config = ezpz.TrainConfig(max_steps=4, log_every=2, out_dir=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="ezpz"):
        ezpz.Trainer(model(), config).fit(*loaders())
    report = (tmp_path / "report.md").read_text()
    assert history.NO_PLOT in report.splitlines()
    assert not (tmp_path / "curves.png").exists()
    assert (tmp_path / "summary.json").is_file()
    assert history.NO_PLOT in caplog.text


def test_a_crashed_run_keeps_every_record_up_to_the_crash(tmp_path):
    recorder = Recorder()
    config = ezpz.TrainConfig(max_steps=60, log_every=3, eval_every=10, out_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="simulated crash"):
        ezpz.Trainer(model(), config, plugins=[recorder, Crash(step=25)]).fit(*loaders())
    records = read_records(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["metrics"]) for r in records] == recorder.logged
    assert records[-1]["step"] == 24
    assert not (tmp_path / "summary.json").exists()


def test_a_resumed_run_continues_the_files_without_duplicates(tmp_path):
    config = ezpz.TrainConfig(max_steps=40, log_every=4, eval_every=10, checkpoint_every=10,
                              out_dir=str(tmp_path))
    first, second = Recorder(), Recorder()
    with pytest.raises(RuntimeError):
        ezpz.Trainer(model(), config, plugins=[first, Crash(step=27)]).fit(*loaders())
    assert [s for s, _ in first.texts] == [10, 20]  # the step-20 checkpoint is the last one
    time.sleep(0.05)
    result = ezpz.Trainer(model(), config, plugins=[second]).fit(*loaders(), resume="latest")

    expected = [(s, m) for s, m in first.logged if s <= 20] + second.logged
    records = read_records(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["metrics"]) for r in records] == expected
    steps = [r["step"] for r in records if "train/loss" in r["metrics"]]
    assert steps == list(range(4, 41, 4))
    samples = read_records(tmp_path / "samples.jsonl")
    assert [s["step"] for s in samples] == [10, 20, 30, 40]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 40
    # Training time counts the first attempt up to its checkpoint as well.
    assert summary["elapsed_s"] > result.elapsed_s


def test_truncating_records_keeps_earlier_steps_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "metrics": {"x": s}}) for s in (2, 4, 6, 8)]
    path.write_text("\n".join(lines) + '\n{"step": 10, "metr')
    assert [r["step"] for r in read_records(path)] == [2, 4, 6, 8]
    truncate_records(path, 5)
    assert [r["step"] for r in read_records(path)] == [2, 4]
    assert path.read_text().endswith("\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
    truncate_records(tmp_path / "missing.jsonl", 3)  # nothing to continue: nothing written
    assert not (tmp_path / "missing.jsonl").exists()


class Stop:
    """Stops the fit gracefully at one step, as the checkpoint plugin does on SIGTERM."""

    @ezpz.hookimpl
    def on_step_end(self, trainer, step: int) -> None:
        if step == 8:
            trainer.should_stop, trainer.stop_reason = True, "SIGTERM"


def test_a_stopped_run_says_so_until_it_is_resumed_and_finishes(tmp_path):
    config = ezpz.TrainConfig(max_steps=16, log_every=4, out_dir=str(tmp_path))
    ezpz.Trainer(model(), config, plugins=[Stop()]).fit(*loaders())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["steps"] == 8

    class Look:
        @ezpz.hookimpl
        def on_step_end(self, step: int) -> None:
            assert not (tmp_path / "summary.json").exists()  # no stale summary mid-run

    ezpz.Trainer(model(), config, plugins=[Look()]).fit(*loaders(), resume="latest")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 16
    records = read_records(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if "train/loss" in r["metrics"]] == [4, 8, 12, 16]
