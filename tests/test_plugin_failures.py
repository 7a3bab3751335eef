"""Broken plugins, pip-installed as real packages: each failure is one line naming the culprit.

Every broken package below is built into a wheel and installed into one venv
with the example plugin (see ``plugin_venv``); each test picks the plugins it
loads with ``EZPZ_LOAD_PLUGINS``, as a user narrowing down a problem would.
The in-process tests at the end check how a failing hook is traced back to its
plugin: only from the traceback, after the fact.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import plugin_venv
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ezpz
from ezpz_core import checkpoint
from ezpz_core.plugins import PluginHookError
from ezpz_core.profile import HookProfile

EXAMPLE = "ezpz-plugin-example"

BROKEN = {
    # distribution: (version, entry point, module source)
    "ezpz-broken-import": ("0.0.1", "broken = ezpz_broken_import", """
        import ezpz
        import not_a_real_module_xyz
    """),
    "ezpz-typo": ("2.0", "typo = ezpz_typo", """
        import ezpz

        @ezpz.hookimpl
        def on_trian_end(trainer):
            pass
    """),
    "ezpz-badarg": ("1.1", "badarg = ezpz_badarg", """
        import ezpz

        @ezpz.hookimpl
        def on_log(step, loss):
            pass
    """),
    "ezpz-clash": ("3.1", "clash = ezpz_clash", """
        import ezpz

        @ezpz.hookimpl
        def register_models(register):
            register(ezpz.ModelSpec(name="mnist", description="not the real one"))
    """),
    # Raises in the hook named by RAISER_HOOK when the run reaches step RAISER_STEP.
    "ezpz-raiser": ("0.5", "raiser = ezpz_raiser:Raiser", """
        import os

        import ezpz

        HOOK = os.environ.get("RAISER_HOOK", "")
        STEP = int(os.environ.get("RAISER_STEP", "0"))


        class Raiser:
            @ezpz.hookimpl
            def on_log(self, trainer, step):
                if HOOK == "on_log" and step == STEP:
                    raise ValueError(f"cannot reach the metrics server at step {step}")

            @ezpz.hookimpl
            def on_save_checkpoint(self, trainer, checkpoint):
                if HOOK == "on_save_checkpoint" and trainer.step == STEP:
                    raise RuntimeError("state too large\\nsecond line of the message")
    """),
}


def write_package(root: Path, dist: str, version: str, entry: str, source: str) -> Path:
    """A one-module distribution with an ``ezpz`` entry point."""
    name, _, target = (part.strip() for part in entry.partition("="))
    module = target.split(":")[0]
    project = root / dist
    project.mkdir(parents=True)
    (project / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=69"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "{version}"
        dependencies = ["ezpz"]

        [project.entry-points.ezpz]
        {name} = "{target}"

        [tool.setuptools]
        py-modules = ["{module}"]
        """))
    (project / f"{module}.py").write_text(textwrap.dedent(source).lstrip())
    return project


@pytest.fixture(scope="session")
def broken(tmp_path_factory) -> plugin_venv.Venv:
    root = tmp_path_factory.mktemp("broken-src")
    projects = [write_package(root, dist, version, entry, source)
                for dist, (version, entry, source) in BROKEN.items()]
    wheels = plugin_venv.build_wheels(projects, tmp_path_factory.mktemp("broken-wheels"))
    example = plugin_venv.example_wheel(tmp_path_factory)
    return plugin_venv.venv_with(tmp_path_factory, "broken", [example, *wheels])


LOAD_FAILURES = [
    ("ezpz-broken-import", "broken",
     "failed to load (ModuleNotFoundError: No module named 'not_a_real_module_xyz')"),
    ("ezpz-typo", "typo", "implements unknown hook 'on_trian_end'; did you mean 'on_train_end'?"),
    ("ezpz-badarg", "badarg", "hook 'on_log' takes argument 'loss' that the hook does not "
                              "provide (it provides: metrics, step, trainer)"),
    ("ezpz-clash", "clash", "registers model 'mnist', already registered by plugin 'mnist' (ezpz "),
]


@pytest.mark.parametrize(("dist", "name", "why"), LOAD_FAILURES,
                         ids=[case[1] for case in LOAD_FAILURES])
def test_a_broken_plugin_is_one_line_and_everything_else_keeps_working(broken, tmp_path, dist,
                                                                      name, why):
    version = BROKEN[dist][0]
    env = {"EZPZ_LOAD_PLUGINS": f"{dist},{EXAMPLE}"}
    expected = (f"plugin '{name}' ({dist} {version}) {why}",
                f"; disable it with --block {name} or EZPZ_BLOCK_PLUGINS={name}")

    models = broken.ezpz("models", cwd=tmp_path, env=env)
    assert models.returncode == 0
    assert "forecast" in models.stdout and "mnist" in models.stdout
    [warning] = models.stderr.splitlines()
    assert warning.startswith(f"ezpz: warning: {expected[0]}") and warning.endswith(expected[1])

    listing = broken.ezpz("plugins", "--json", cwd=tmp_path, env=env)
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert (rows[name]["distribution"], rows[name]["version"]) == (dist, version)
    assert expected[0] in rows[name]["error"]
    assert rows["forecast"]["error"] is None

    train = broken.ezpz("train", "forecast", "--max-steps", "1", cwd=tmp_path, env=env)
    assert train.returncode == 2
    [error] = train.stderr.splitlines()
    assert error.startswith(f"ezpz: error: {expected[0]}") and error.endswith(expected[1])

    for disabled in (["--block", name], ["--block", dist]):
        shown = broken.ezpz("train", "forecast", *disabled, "--help", cwd=tmp_path, env=env)
        assert shown.returncode == 0 and "forecast options" in shown.stdout, shown.stderr
    quiet = broken.ezpz("models", cwd=tmp_path, env={**env, "EZPZ_BLOCK_PLUGINS": name})
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_a_blocked_broken_plugin_lets_the_others_train(broken, tmp_path):
    env = {"EZPZ_LOAD_PLUGINS": f"ezpz-broken-import,ezpz-typo,{EXAMPLE}"}
    done = broken.ezpz("train", "forecast", "--max-steps", "2", "--series", "64",
                       "--block", "broken", "--block", "typo", "--out-dir", "run",
                       cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "finished forecast: 2 steps" in done.stdout


RAISES = [
    ("on_log", 5, "ValueError: cannot reach the metrics server at step 5"),
    ("on_save_checkpoint", 6, "RuntimeError: state too large"),
]


@pytest.mark.parametrize(("hook", "step", "what"), RAISES, ids=[case[0] for case in RAISES])
def test_a_hook_raising_mid_run_names_the_plugin_and_keeps_the_last_checkpoint(
        broken, tmp_path, hook, step, what):
    env = {"EZPZ_LOAD_PLUGINS": f"ezpz-raiser,{EXAMPLE}", "RAISER_HOOK": hook,
           "RAISER_STEP": str(step)}
    args = ["train", "forecast", "--max-steps", "8", "--log-every", "1", "--checkpoint-every",
            "2", "--series", "256", "--seq-len", "16", "--out-dir", "run"]
    done = broken.ezpz(*args, cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("ezpz: error:")]
    assert errors == [f"ezpz: error: plugin 'raiser' (ezpz-raiser 0.5) raised in hook '{hook}': "
                      f"{what}; disable it with --block raiser or EZPZ_BLOCK_PLUGINS=raiser"]
    assert done.stderr.rstrip().endswith(errors[0])

    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in checkpoint.complete(root)] == ["step-00000002", "step-00000004"]
    assert checkpoint.read_pointer(root, checkpoint.LATEST) == root / "step-00000004"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step-00000002",
                                                                    "step-00000004"]
    state = checkpoint.load(root / "step-00000004")
    assert state["progress"]["step"] == 4 and state["model_name"] == "forecast"

    if hook == "on_log":  # the run continues from that checkpoint once the plugin is blocked
        resumed = broken.ezpz(*args, "--resume", "--block", "raiser", cwd=tmp_path, env=env)
        assert resumed.returncode == 0, resumed.stderr
        assert "finished forecast: 8 steps" in resumed.stdout
        assert checkpoint.read_pointer(root, checkpoint.LATEST) == root / "step-00000008"


# --- blame, in-process ---------------------------------------------------------


def _loader(features: int = 4) -> DataLoader:
    data = TensorDataset(torch.randn(32, features), torch.randint(0, 2, (32,)))
    return DataLoader(data, batch_size=8)


def _fit_and_blame(plugins: list[object], *, model: nn.Module | None = None,
                   evaluate: bool = False) -> tuple[ezpz.Trainer, BaseException]:
    trainer = ezpz.Trainer(model or nn.Linear(4, 2), ezpz.TrainConfig(max_steps=3),
                           plugins=plugins, block=["console"])
    with pytest.raises(Exception) as caught:
        trainer.fit(_loader(), _loader() if evaluate else None)
    return trainer, caught.value


class Boom:
    def __init__(self, name: str = "boom") -> None:
        self.name = name

    @ezpz.hookimpl
    def on_step_end(self, step):
        if step == 2:
            raise KeyError(f"{self.name} lost its key")


def test_blame_names_a_plugin_passed_in_code_and_how_to_drop_it():
    trainer, error = _fit_and_blame([Boom()])
    blamed = trainer.plugins.blame(error)
    assert isinstance(blamed, PluginHookError) and isinstance(blamed, ezpz.PluginError)
    assert (blamed.plugin.name, blamed.hook, blamed.error) == ("boom", "on_step_end", error)
    assert str(blamed) == ("plugin 'boom' (passed in code) raised in hook 'on_step_end': "
                           "KeyError: 'boom lost its key'; remove it from Trainer(plugins=...)")


def test_of_two_instances_of_one_class_the_one_that_raised_is_named():
    class Quiet(Boom):
        @ezpz.hookimpl
        def on_step_end(self, step):
            if self.name == "loud" and step == 2:
                raise RuntimeError("too loud")

    trainer, error = _fit_and_blame([Quiet("quiet"), Quiet("loud")])
    assert trainer.plugins.blame(error).plugin.name == "loud"


def test_the_innermost_hook_is_blamed_not_the_plugin_that_called_into_it():
    class EvaluatesEveryStep:
        @ezpz.hookimpl
        def on_step_end(self, trainer):
            trainer.evaluate()

    class BadMetric:
        @ezpz.hookimpl
        def eval_step(self, model, batch):
            raise ZeroDivisionError("no samples")

    trainer, error = _fit_and_blame([EvaluatesEveryStep(), BadMetric()], evaluate=True)
    found = trainer.plugins.culprit(error)
    assert found is not None and (found[0].name, found[1]) == ("BadMetric", "eval_step")


def test_errors_of_the_users_own_model_or_of_ezpz_are_not_blamed_on_plugins():
    trainer, error = _fit_and_blame([Boom()], model=nn.Linear(3, 2))  # 4 features in, 3 expected
    assert isinstance(error, RuntimeError) and trainer.plugins.blame(error) is None

    class Deliberate:
        @ezpz.hookimpl
        def on_train_start(self):
            raise ezpz.DataError("no files in /data")

    trainer, error = _fit_and_blame([Deliberate()])
    assert trainer.plugins.culprit(error) is not None
    assert trainer.plugins.blame(error) is None  # already one line meant for the user


def test_blame_sees_through_hook_profiling():
    trainer = ezpz.Trainer(nn.Linear(4, 2), ezpz.TrainConfig(max_steps=3), plugins=[Boom()],
                           block=["console"])
    HookProfile(trainer.plugins)
    with pytest.raises(KeyError) as caught:
        trainer.fit(_loader())
    blamed = trainer.plugins.blame(caught.value)
    assert blamed is not None and (blamed.plugin.name, blamed.hook) == ("boom", "on_step_end")
