"""The TensorBoard plugin, its event files read back with TensorBoard's own readers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import Crash, toy_loaders, toy_model
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.util import tensor_util
from torch import nn
from torch.utils.data import DataLoader

import ezpz
from ezpz_core.errors import ConfigError
from ezpz_models.gpt import plugin as gpt_plugin
from ezpz_models.gpt.plugin import GPTOptions

ROOT = Path(__file__).resolve().parents[1]
TINY_GPT = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
            "--batch-size", "4", "--eval-batches", "4", "--quiet"]


def loaders() -> tuple[DataLoader, DataLoader]:
    return toy_loaders(96, 8, 32)


def model() -> nn.Module:
    return toy_model(16)


def accumulate(run_dir: Path) -> ea.EventAccumulator:
    everything = {ea.SCALARS: 0, ea.TENSORS: 0, ea.HISTOGRAMS: 0}
    acc = ea.EventAccumulator(str(run_dir / "tensorboard"), size_guidance=everything)
    acc.Reload()
    return acc


def records(run_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def assert_scalars_match_metrics_file(run_dir: Path) -> ea.EventAccumulator:
    """Every metrics.jsonl value is a TensorBoard point with the same tag and step, and no more."""
    acc = accumulate(run_dir)
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in records(run_dir):
        for tag, value in record["metrics"].items():
            expected.setdefault(tag, []).append((record["step"], value))
    assert sorted(acc.Tags()["scalars"]) == sorted(expected)
    for tag, points in expected.items():
        got = [(event.step, event.value) for event in acc.Scalars(tag)]
        assert [step for step, _ in got] == [step for step, _ in points], tag
        # Event files hold float32; metrics.jsonl holds the float64 the Trainer logged.
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6), tag
    return acc


def hparams_data(acc: ea.EventAccumulator) -> dict[str, plugin_data_pb2.HParamsPluginData]:
    return {tag: plugin_data_pb2.HParamsPluginData.FromString(content)
            for tag, content in acc.PluginTagToContent("hparams").items()}


def texts(acc: ea.EventAccumulator, tag: str) -> list[tuple[int, str]]:
    return [(event.step, tensor_util.make_ndarray(event.tensor_proto).item().decode())
            for event in acc.Tensors(f"{tag}/text_summary")]



class FlushProbe:
    """Reads the event files in the middle of the run, right after an evaluation."""

    def __init__(self, run_dir: Path, step: int) -> None:
        self.run_dir, self.at = run_dir, step
        self.seen: dict[str, list[int]] = {}

    @ezpz.hookimpl
    def on_step_end(self, step: int) -> None:
        if step == self.at:
            acc = accumulate(self.run_dir)
            self.seen = {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> Path:
    """Two finished runs that differ in learning rate, in one log folder."""
    logdir = tmp_path_factory.mktemp("runs")
    for name, lr in (("a", 1e-2), ("b", 3e-2)):
        config = ezpz.TrainConfig(max_steps=24, log_every=4, eval_every=12, lr=lr,
                                  out_dir=str(logdir / name))
        probe = FlushProbe(logdir / name, step=12)
        ezpz.Trainer(model(), config, plugins=[probe]).fit(*loaders())
        (logdir / name / "probe.json").write_text(json.dumps(probe.seen))
    return logdir


def test_scalars_are_the_metrics_file_at_the_same_steps(two_runs):
    acc = assert_scalars_match_metrics_file(two_runs / "a")
    assert [e.step for e in acc.Scalars("train/loss")] == [4, 8, 12, 16, 20, 24]
    assert [e.step for e in acc.Scalars("eval/accuracy")] == [12, 24]
    assert {"train/lr", "train/samples_per_sec", "train/step_ms", "eval/loss"} <= set(
        acc.Tags()["scalars"])


def test_events_are_flushed_at_each_evaluation(two_runs):
    seen = json.loads((two_runs / "a" / "probe.json").read_text())
    assert seen["eval/loss"] == [12] and seen["train/loss"] == [4, 8, 12]


def test_hyperparameters_parameter_count_and_final_status(two_runs):
    acc = accumulate(two_runs / "a")
    data = hparams_data(acc)
    start = data["_hparams_/session_start_info"].session_start_info.hparams
    assert start["lr"].number_value == pytest.approx(1e-2)
    assert start["max_steps"].number_value == 24
    assert start["model"].string_value == "Sequential"
    assert start["parameters"].number_value == 8 * 16 + 16 + 16 * 3 + 3
    assert "out_dir" not in start
    end = data["_hparams_/session_end_info"].session_end_info
    assert end.status == api_pb2.Status.Value("STATUS_SUCCESS")
    assert texts(acc, "model") == [(0, "**Sequential**: 195 parameters")]


def test_tensorboards_hparams_tab_compares_the_runs_by_final_metrics(two_runs):
    from tensorboard.backend.event_processing import data_provider
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import hparams_plugin
    from werkzeug import Response
    from werkzeug.test import Client

    multiplexer = pem.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(two_runs))
    multiplexer.Reload()
    context = base_plugin.TBContext(
        logdir=str(two_runs), multiplexer=multiplexer,
        data_provider=data_provider.MultiplexerDataProvider(multiplexer, str(two_runs)))
    app = hparams_plugin.HParamsPlugin(context).get_plugin_apps()["/session_groups"]
    request = {"experimentName": "", "allowedStatuses": ["STATUS_SUCCESS"], "startIndex": 0,
               "sliceSize": 10, "colParams": [{"metric": {"tag": "eval/loss", "group": ""}}]}
    reply = Client(app, Response).post("/session_groups", data=json.dumps(request),
                                       headers={"content-type": "application/json"})
    assert reply.status_code == 200
    groups = json.loads(reply.get_data(as_text=True))["sessionGroups"]
    by_run = {g["sessions"][0]["name"].split("/")[0]: g for g in groups}
    assert sorted(by_run) == ["a", "b"]
    for name, group in by_run.items():
        final = json.loads((two_runs / name / "summary.json").read_text())["final"]
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert values["eval/loss"] == pytest.approx(final["eval/loss"], rel=1e-6)
        assert group["hparams"]["lr"] == pytest.approx({"a": 1e-2, "b": 3e-2}[name])


def test_a_crashed_run_keeps_its_curves(tmp_path):
    config = ezpz.TrainConfig(max_steps=40, log_every=4, eval_every=8, out_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="simulated crash"):
        ezpz.Trainer(model(), config, plugins=[Crash(step=14)]).fit(*loaders())
    acc = assert_scalars_match_metrics_file(tmp_path)
    assert [e.step for e in acc.Scalars("train/loss")] == [4, 8, 12]
    end = hparams_data(acc)["_hparams_/session_end_info"].session_end_info
    assert end.status == api_pb2.Status.Value("STATUS_FAILURE")


class Sigterm:
    """Sends this process SIGTERM at one step, as a scheduler preempting the job would."""

    @ezpz.hookimpl
    def on_step_end(self, step: int) -> None:
        if step == 8:
            # Whoever stops the run gracefully (the checkpoint plugin) must be listening.
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_run_stopped_by_sigterm_is_flushed_and_left_open_for_resuming(tmp_path):
    config = ezpz.TrainConfig(max_steps=40, log_every=4, out_dir=str(tmp_path))
    trainer = ezpz.Trainer(model(), config, plugins=[Sigterm()])
    trainer.fit(*loaders())
    assert trainer.stop_reason == "SIGTERM"
    acc = assert_scalars_match_metrics_file(tmp_path)
    assert [e.step for e in acc.Scalars("train/loss")] == [4, 8]
    assert list(hparams_data(acc)) == ["_hparams_/session_start_info"]  # no end: it continues


def _next_second() -> None:
    """Event files sort by their creation second: keep a new attempt's file after the last."""
    time.sleep(1.0 - time.time() % 1.0 + 0.01)


class Values:
    """Keeps what a fit logged, by step and tag."""

    def __init__(self) -> None:
        self.points: dict[tuple[int, str], float] = {}

    @ezpz.hookimpl
    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.points.update({(step, tag): value for tag, value in metrics.items()})


def test_a_resumed_run_continues_the_same_curves_without_duplicates(tmp_path):
    config = ezpz.TrainConfig(max_steps=30, log_every=2, eval_every=10, checkpoint_every=10,
                              out_dir=str(tmp_path))
    first, second = Values(), Values()
    with pytest.raises(RuntimeError):
        ezpz.Trainer(model(), config, plugins=[first, Crash(step=17)]).fit(*loaders())
    assert max(step for step, _ in first.points) == 16  # logged past the step-10 checkpoint
    _next_second()
    resumed = ezpz.Trainer(model(), config, plugins=[second])
    resumed.fit(*loaders(), resume="latest")
    assert min(step for step, _ in second.points) == 12  # it restarted from step 10

    acc = assert_scalars_match_metrics_file(tmp_path)
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(2, 31, 2))
    assert [e.step for e in acc.Scalars("eval/loss")] == [10, 20, 30]
    for tag in ("train/loss", "eval/loss"):
        for event in acc.Scalars(tag):
            source = first if event.step <= 10 else second
            assert event.value == pytest.approx(source.points[(event.step, tag)], rel=1e-6)
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2


def test_gpt_run_shows_a_text_sample_at_each_evaluation(tmp_path):
    corpus = tmp_path / "verse.txt"
    corpus.write_text("To be, or not to be, that is the question.\nWhether 'tis nobler.\n" * 60)
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "ezpz_core.cli", "train", "gpt", "--data", str(corpus),
         "--max-steps", "20", "--eval-every", "10", "--log-every", "5", *TINY_GPT,
         "--out-dir", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    acc = assert_scalars_match_metrics_file(out)
    assert "train/tokens_per_sec" in acc.Tags()["scalars"]
    samples = records(out, "samples.jsonl")
    assert [(s["step"], s["tag"]) for s in samples] == [(10, "sample"), (20, "sample")]
    shown = texts(acc, "sample")
    assert [step for step, _ in shown] == [10, 20]
    for (_, text), sample in zip(shown, samples, strict=True):
        assert len(sample["text"]) == gpt_plugin.SAMPLE_TOKENS  # one character per token
        assert set(sample["text"]) <= set(corpus.read_text())
        assert text == "\n".join(f"    {line}" for line in sample["text"].split("\n"))
    assert texts(acc, "model")[0][1].startswith("**gpt**: ")
    assert "_hparams_/session_start_info" in hparams_data(acc)


class Texts:
    def __init__(self) -> None:
        self.seen: list[tuple[int, str, str]] = []

    @ezpz.hookimpl
    def on_log_text(self, step: int, tag: str, text: str) -> None:
        self.seen.append((step, tag, text))


def test_the_gpt_sample_leaves_the_global_rng_and_the_model_alone(tmp_path):
    corpus = tmp_path / "verse.txt"
    corpus.write_text("abcdefgh ijklmnop\n" * 100)
    options = GPTOptions(data=str(corpus), n_layer=1, n_head=2, n_embd=16, block_size=8)
    recorder = Texts()
    trainer = ezpz.Trainer("gpt", ezpz.TrainConfig(max_steps=1, batch_size=2),
                           model_config=options, plugins=[recorder])
    trainer.setup()
    assert trainer.module is not None
    trainer.module.train()
    rng = torch.get_rng_state()
    gpt_plugin.on_eval_end(trainer)
    gpt_plugin.on_eval_end(trainer)
    assert torch.equal(torch.get_rng_state(), rng)
    assert trainer.module.training
    (_, tag, text), again = recorder.seen
    assert tag == "sample" and len(text) == gpt_plugin.SAMPLE_TOKENS
    assert again[2] == text  # the same seed, the same model: the same sample
    trainer.rank = 1
    gpt_plugin.on_eval_end(trainer)
    assert len(recorder.seen) == 2  # other ranks neither sample nor log


def test_histograms_every_n_steps(tmp_path, monkeypatch):
    monkeypatch.setenv("EZPZ_TB_HISTOGRAMS", "5")
    config = ezpz.TrainConfig(max_steps=10, log_every=5, out_dir=str(tmp_path))
    ezpz.Trainer(model(), config).fit(loaders()[0])
    acc = accumulate(tmp_path)
    assert {"weights/0.weight", "grads/0.weight", "weights/2.bias", "grads/2.bias"} <= set(
        acc.Tags()["histograms"])
    weights = acc.Histograms("weights/0.weight")
    assert [e.step for e in weights] == [5, 10]
    assert all(e.histogram_value.num == 8 * 16 for e in weights)
    grads = acc.Histograms("grads/0.weight")
    assert [e.step for e in grads] == [5, 10] and grads[0].histogram_value.sum_squares > 0


def test_histograms_are_off_by_default_and_a_bad_setting_is_refused(tmp_path, monkeypatch):
    config = ezpz.TrainConfig(max_steps=2, out_dir=str(tmp_path / "off"))
    ezpz.Trainer(model(), config).fit(loaders()[0])
    assert accumulate(tmp_path / "off").Tags()["histograms"] == []
    monkeypatch.setenv("EZPZ_TB_HISTOGRAMS", "often")
    config = ezpz.TrainConfig(max_steps=2, out_dir=str(tmp_path / "bad"))
    with pytest.raises(ConfigError, match="EZPZ_TB_HISTOGRAMS='often'"):
        ezpz.Trainer(model(), config).fit(loaders()[0])


def test_only_rank_zero_writes_and_only_with_an_out_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ezpz.Trainer(model(), ezpz.TrainConfig(max_steps=2)).fit(loaders()[0])
    assert list(tmp_path.iterdir()) == []
    trainer = ezpz.Trainer(model(), ezpz.TrainConfig(max_steps=2, out_dir=str(tmp_path / "r")))
    trainer.rank = 1
    trainer.fit(loaders()[0])
    assert not (tmp_path / "r" / "tensorboard").exists()
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_loggers_do_not_sync_the_device_on_steps_that_do_not_log(tmp_path, monkeypatch):
    """Reading a tensor's value from a logger is a device sync: allowed only at logging steps."""
    plugins_dir = str(ROOT / "ezpz_plugins")
    trainer = ezpz.Trainer(model(), ezpz.TrainConfig(max_steps=20, log_every=5, eval_every=10,
                                                      out_dir=str(tmp_path)))
    reads: list[tuple[int, str]] = []

    def watch(name: str) -> None:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            if sys._getframe(1).f_code.co_filename.startswith(plugins_dir):
                reads.append((trainer.step, name))
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)

    for name in ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__"):
        watch(name)
    trainer.fit(*loaders())
    assert (tmp_path / "tensorboard").is_dir() and (tmp_path / "summary.json").is_file()
    assert {step for step, _ in reads} <= {0, 5, 10, 15, 20}, reads
