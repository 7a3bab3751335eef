"""Third-party plugins as users get them: wheels pip-installed into a fresh venv.

The example distribution (``examples/ezpz-plugin-example``) and a package
written by ``ezpz plugin new demo`` are built into wheels and installed with pip
next to an ezpz wheel (see ``plugin_venv`` for how the venv reuses the installed
torch), then driven through the ``ezpz`` command as a user would. The example's
hooks are also checked in-process, where their results are easy to inspect.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import plugin_venv
import pytest

import ezpz
from ezpz_core.profile import HookProfile

THIRD_PARTY = {"forecast": ("ezpz-plugin-example", "0.1.0"), "demo": ("ezpz-demo", "0.1.0")}


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> plugin_venv.Venv:
    example = plugin_venv.example_wheel(tmp_path_factory)
    _, demo = plugin_venv.scaffold_wheel(tmp_path_factory, "demo")
    return plugin_venv.venv_with(tmp_path_factory, "plugins", [example, demo])


def test_the_venv_reuses_torch_and_imports_the_installed_wheels(installed, tmp_path):
    code = ("import importlib.util as u, json; print(json.dumps({n: u.find_spec(n).origin for n "
            "in ('torch', 'ezpz_core', 'ezpz_plugin_example', 'ezpz_demo')}))")
    done = plugin_venv.run([installed.python, "-c", code], cwd=tmp_path, env=installed.env(),
                           check=True)
    origins = {name: Path(origin) for name, origin in json.loads(done.stdout).items()}
    shared = Path(plugin_venv.sysconfig.get_paths()["purelib"])
    assert origins["torch"].is_relative_to(shared), "torch should be the one already installed"
    for name in ("ezpz_core", "ezpz_plugin_example", "ezpz_demo"):
        assert origins[name].is_relative_to(installed.site), f"{name} is not the installed wheel"


def test_models_and_plugins_list_the_installed_plugins(installed, tmp_path):
    models = installed.ezpz("models", "--json", cwd=tmp_path)
    assert models.returncode == 0 and models.stderr == ""
    providers = {row["name"]: row["plugin"] for row in json.loads(models.stdout)}
    assert providers["forecast"] == "forecast" and providers["demo"] == "demo"
    assert providers["mnist"] == "mnist"

    listing = installed.ezpz("plugins", "--json", cwd=tmp_path)
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert set(rows) >= set(THIRD_PARTY) and not any(row["builtin"] for row in rows.values())
    for name, (dist, version) in THIRD_PARTY.items():
        row = rows[name]
        assert (row["distribution"], row["version"], row["error"]) == (dist, version, None)
        assert row["models"] == [name]
        assert Path(row["path"]).is_relative_to(installed.site)
    assert rows["forecast"]["hooks"] == sorted([
        "build_data", "build_model", "configure_optimizers", "eval_step", "on_log",
        "register_models", "train_step"])
    assert rows["demo"]["hooks"] == ["build_data", "build_model", "register_models"]
    assert rows["forecast"]["source"] == "ezpz_plugin_example.plugin"

    table = installed.ezpz("plugins", cwd=tmp_path).stdout
    assert "ezpz-plugin-example  0.1.0" in table and "mnist" not in table
    assert "mnist" in installed.ezpz("plugins", "--all", cwd=tmp_path).stdout
    options = installed.ezpz("train", "forecast", "--help", cwd=tmp_path).stdout
    assert "forecast options" in options and "--seq-len" in options


def test_the_example_trains_and_reports_hook_times(installed, tmp_path):
    out = tmp_path / "run"
    done = installed.ezpz("train", "forecast", "--max-steps", "5", "--log-every", "1",
                          "--series", "256", "--out-dir", str(out), "--profile-hooks",
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "finished forecast: 5 steps" in done.stdout
    records = [json.loads(line) for line in (out / "example_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4, 5]
    assert "eval/skill" in records[-1]  # the evaluation at the end of the run
    table = done.stderr[done.stderr.index("hook time by plugin"):].splitlines()
    rows = {tuple(line.split()[:3]) for line in table[2:]}
    assert ("forecast", "train_step", "5") in rows
    assert ("forecast", "on_log", "6") in rows  # five train records and one eval record
    assert ("history", "on_log", "6") in rows


def test_the_scaffolded_plugin_trains_right_after_install(installed, tmp_path_factory):
    work = tmp_path_factory.mktemp("demo-run")
    done = installed.ezpz("train", "demo", "--max-steps", "5", "--out-dir", "run", cwd=work,
                          env={"EZPZ_PROFILE_HOOKS": "1"})
    assert done.returncode == 0, done.stderr
    summary = json.loads((work / "run" / "summary.json").read_text())
    assert summary["model"] == "demo" and summary["steps"] == 5
    assert "hook time by plugin" in done.stderr
    project, _ = plugin_venv.scaffold_wheel(tmp_path_factory, "demo")
    tests = plugin_venv.run([installed.python, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                            cwd=project, env=installed.env())
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "1 passed" in tests.stdout


def test_disabling_installed_plugins(installed, tmp_path):
    def models(*args: str, **env: str) -> set[str]:
        done = installed.ezpz("models", "--json", *args, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        return {row["name"] for row in json.loads(done.stdout)}

    assert {"forecast", "demo", "mnist"} <= models()
    assert "forecast" not in models("--block", "forecast")
    assert not {"forecast", "demo"} & models(EZPZ_BLOCK_PLUGINS="forecast,ezpz-demo")
    assert not {"forecast", "demo"} & models(EZPZ_DISABLE_PLUGIN_AUTOLOAD="1")
    only = models(EZPZ_LOAD_PLUGINS="ezpz-demo")
    assert "demo" in only and "forecast" not in only and "mnist" in only
    refused = installed.ezpz("train", "forecast", "--block", "forecast", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.startswith("ezpz: error: unknown model 'forecast'")


# --- the example's hooks, in-process ------------------------------------------


@pytest.fixture
def example(monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_venv.EXAMPLE / "src"))
    for name in [m for m in sys.modules if m.startswith("ezpz_plugin_example")]:
        monkeypatch.delitem(sys.modules, name)
    from ezpz_plugin_example import plugin

    return plugin


def test_the_example_hooks_train_evaluate_schedule_and_log(example, tmp_path):
    import torch

    options = example.ForecastOptions(series=64, seq_len=12, hidden=8)
    config = ezpz.TrainConfig(max_steps=6, batch_size=16, lr=0.01, log_every=2, eval_every=3,
                              out_dir=str(tmp_path))
    trainer = ezpz.Trainer("forecast", config, model_config=options, plugins=[example],
                           block=["console", "tensorboard", "checkpoint", "history"])
    result = trainer.fit()
    # configure_optimizers: the plugin's one-cycle schedule, not ezpz's fallback
    assert isinstance(trainer.scheduler, torch.optim.lr_scheduler.OneCycleLR)
    # train_step's extra metric and eval_step's three metrics reach the results
    assert set(result.eval) == {"eval/loss", "eval/mae", "eval/naive_loss"}
    assert "train/mae" in result.train
    # on_log: one JSON line per record, evaluations with their skill
    records = [json.loads(line) for line in (tmp_path / example.LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3, 4, 6, 6]
    evaluated = [r for r in records if "eval/loss" in r]
    assert all(abs(r["eval/skill"] - (1 - r["eval/loss"] / r["eval/naive_loss"])) < 1e-9
               for r in evaluated)


def test_the_example_beats_persistence_after_a_short_run(example):
    options = example.ForecastOptions(series=256, seq_len=24, hidden=16)
    config = ezpz.TrainConfig(epochs=3, batch_size=32, lr=0.02, log_every=100)
    result = ezpz.Trainer("forecast", config, model_config=options, plugins=[example],
                          block=["console"]).fit()
    assert result.eval["eval/loss"] < 0.75 * result.eval["eval/naive_loss"]


# --- hook profiling ------------------------------------------------------------


def test_a_slow_plugin_tops_the_hook_profile_and_detach_restores_the_hooks():
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Slow:
        @ezpz.hookimpl
        def on_step_end(self, step):
            time.sleep(0.02)

    class Fast:
        @ezpz.hookimpl
        def on_step_end(self, step):
            pass

    data = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    trainer = ezpz.Trainer(torch.nn.Linear(4, 2), ezpz.TrainConfig(max_steps=4),
                           plugins=[Slow(), Fast()], block=["console"])
    originals = [impl.function for impl in trainer.hooks.on_step_end.get_hookimpls()]
    profile = HookProfile(trainer.plugins)
    trainer.fit(DataLoader(data, batch_size=8))
    profile.detach()
    assert [impl.function for impl in trainer.hooks.on_step_end.get_hookimpls()] == originals
    plugin, hook, calls, seconds = profile.rows()[0]
    assert (plugin, hook, calls) == ("Slow", "on_step_end", 4) and seconds >= 0.08
    assert ("Fast", "on_step_end") in {(p, h) for p, h, _, _ in profile.rows()}
    assert any(row[:2] == ("ezpz.defaults", "train_step") for row in profile.rows())
    shown = io.StringIO()
    profile.report(shown)
    lines = shown.getvalue().splitlines()
    assert lines[0].startswith("hook time by plugin")
    assert lines[1].split() == ["plugin", "hook", "calls", "total", "s", "mean", "ms", "%", "of",
                                "run"]
    assert lines[2].split()[:3] == ["Slow", "on_step_end", "4"]
