"""``ezpz plugin new``: what it writes, what it refuses, and that the result trains.

Installing the written package with pip and training it through ``ezpz train``
is covered in test_plugin_packages.py; here the package is checked on disk and
its plugin module is trained in-process.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib

import pytest

import ezpz
from ezpz_core import cli, scaffold


@pytest.mark.parametrize("name", ["mlp", "tiny-net", "gpt_small2"])
def test_valid_names_map_to_a_distribution_a_package_and_an_options_class(name):
    names = scaffold.names(name)
    identifier = name.replace("-", "_")
    assert names["dist"] == f"ezpz-{name}" and names["package"] == f"ezpz_{identifier}"
    assert names["options"].isidentifier() and names["options"].endswith("Options")


@pytest.mark.parametrize("name", ["", "Mlp", "2fast", "my model", "a--b", "x-", "../up"])
def test_invalid_names_are_refused_with_the_rule(name):
    with pytest.raises(ezpz.EzpzError, match="lower-case letters and digits"):
        scaffold.names(name)


def test_the_package_declares_its_entry_point_and_its_code_compiles():
    files = scaffold.files("tiny-net")
    assert set(files) == {"pyproject.toml", "README.md", "src/ezpz_tiny_net/__init__.py",
                          "src/ezpz_tiny_net/plugin.py", "tests/test_ezpz_tiny_net.py"}
    project = tomllib.loads(files["pyproject.toml"])
    assert project["project"]["name"] == "ezpz-tiny-net"
    assert project["project"]["dependencies"] == ["ezpz"]
    assert project["project"]["entry-points"]["ezpz"] == {"tiny-net": "ezpz_tiny_net.plugin"}
    assert project["build-system"]["build-backend"] == "setuptools.build_meta"
    for path, text in files.items():
        if path.endswith(".py"):
            compile(text, path, "exec")
    plugin = files["src/ezpz_tiny_net/plugin.py"]
    for hook in ("register_models", "build_data", "build_model"):
        assert f"@ezpz.hookimpl\ndef {hook}(" in plugin


def test_ezpz_plugin_new_writes_the_package_and_refuses_to_overwrite(tmp_path, capsys):
    target = tmp_path / "pkg"
    assert cli.main(["plugin", "new", "tiny-net", "--dir", str(target)]) == 0
    assert (target / "src" / "ezpz_tiny_net" / "plugin.py").is_file()
    assert "ezpz train tiny-net --max-steps 5" in capsys.readouterr().out

    assert cli.main(["plugin", "new", "tiny-net", "--dir", str(target)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == f"ezpz: error: {target} already exists and is not empty; choose another --dir"


def test_a_name_an_installed_plugin_registers_is_refused(tmp_path, capsys):
    assert cli.main(["plugin", "new", "mnist", "--dir", str(tmp_path / "p")]) == 2
    assert "model 'mnist' is already registered by plugin 'mnist' (ezpz " in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_the_default_folder_is_ezpz_name_in_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert scaffold.write("mlp") == tmp_path.joinpath("ezpz-mlp").relative_to(tmp_path)
    assert (tmp_path / "ezpz-mlp" / "pyproject.toml").is_file()


def test_the_written_plugin_trains(tmp_path, monkeypatch):
    root = scaffold.write("tiny-net", tmp_path / "ezpz-tiny-net")
    monkeypatch.syspath_prepend(str(root / "src"))
    plugin = importlib.import_module("ezpz_tiny_net.plugin")
    config = ezpz.TrainConfig(max_steps=20, batch_size=32, lr=0.01, log_every=10)
    result = ezpz.Trainer("tiny-net", config, plugins=[plugin], block=["console"]).fit()
    assert result.step == 20
    assert result.eval["eval/accuracy"] > 0.5  # four separable clusters; chance is 0.25


def test_the_written_code_passes_ruff_as_a_project_of_its_own(tmp_path):
    root = scaffold.write("tiny-net", tmp_path / "ezpz-tiny-net")
    if subprocess.run([sys.executable, "-m", "ruff", "--version"],
                      capture_output=True).returncode != 0:
        pytest.skip("ruff is not installed")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--isolated", "--no-cache",
                           "--select", "E,F,W,I,B,UP,SIM,RUF", "--line-length", "100",
                           "--target-version", "py311", "."],
                          capture_output=True, text=True, cwd=root)  # ezpz is third-party there
    assert done.returncode == 0, done.stdout
