"""Real plugin distributions for the tests: built into wheels, pip-installed into fresh venvs.

How a fresh virtual environment gets torch without downloading it: the venv is
created with ``--without-pip`` from this interpreter's base Python, and a
``.pth`` file in its site-packages names the test interpreter's site-packages.
Python appends that directory to ``sys.path`` after the venv's own, so torch,
pluggy, pip and setuptools are importable there while everything pip installs
lands in the venv and is found first. ``--system-site-packages`` would not do:
the "system" of a venv made from inside a venv is the base Python's, not ours.
ezpz itself is installed as a wheel (``--ignore-installed``: pip sees the
development copy through the ``.pth`` and must neither skip nor uninstall it),
so the venv has its own ``ezpz`` command and the entry points of the wheel.

Every pip call is offline: ``--no-index``, ``--no-deps`` where the dependencies
are already importable, and ``--no-build-isolation`` so the setuptools already
here builds the wheels. Sources are copied to a temporary folder first, since
setuptools writes ``build/`` and ``*.egg-info`` next to them.

Built things are cached for the whole test session (one set of wheels, one
venv per purpose), keyed in this module, so every test module shares them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ezpz-plugin-example"
EZPZ_SOURCES = ("pyproject.toml", "README.md", "ezpz", "ezpz_core", "ezpz_models", "ezpz_plugins")
#: Plugin controls a test process may have set; a venv's commands start without them.
PLUGIN_ENV = ("EZPZ_DISABLE_PLUGIN_AUTOLOAD", "EZPZ_LOAD_PLUGINS", "EZPZ_BLOCK_PLUGINS",
              "EZPZ_PROFILE_HOOKS", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
#: pip settings for commands run as written (the tutorial's): offline, building with what is
#: here. pip reads a "no-" option's variable inverted: PIP_NO_BUILD_ISOLATION=0 turns it off.
OFFLINE_PIP = {"PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0",
               "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

PRINT_PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"

_cache: dict[str, Any] = {}


def run(command: Sequence[str | Path], *, cwd: Path, env: Mapping[str, str] | None = None,
        timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} failed ({done.returncode}):\n"
                    f"{done.stdout}\n{done.stderr}")
    return done


def copy_sources(source: Path, into: Path, names: Sequence[str] | None = None) -> Path:
    """A clean copy of a project (or of ``names`` in it) to build from."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
    if names is None:
        shutil.copytree(source, into, ignore=ignore)
        return into
    into.mkdir(parents=True)
    for name in names:
        path = source / name
        if path.is_dir():
            shutil.copytree(path, into / name, ignore=ignore)
        else:
            shutil.copy2(path, into / name)
    return into


def build_wheels(projects: Sequence[Path], out: Path) -> list[Path]:
    """Build each project (already copied somewhere disposable) into a wheel in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("*.whl"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--disable-pip-version-check", "--quiet", "-w", out, *projects],
        cwd=out, check=True)
    return sorted(set(out.glob("*.whl")) - before)


class Venv:
    """A fresh virtual environment seeing this interpreter's packages after its own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.python = self.bin / "python"
        run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root.parent, check=True)
        found = run([self.python, "-c", PRINT_PURELIB], cwd=root, check=True)
        self.site = Path(found.stdout.strip())
        here = sysconfig.get_paths()["purelib"]
        (self.site / "_ezpz_tests_shared_packages.pth").write_text(here + "\n")

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a shell that activated this venv, offline for pip."""
        env = {k: v for k, v in os.environ.items() if k not in PLUGIN_ENV}
        env.update(OFFLINE_PIP)
        env["PIP_CACHE_DIR"] = str(self.root / "pip-cache")
        env["VIRTUAL_ENV"] = str(self.root)
        env["PATH"] = os.pathsep.join([str(self.bin), env.get("PATH", "")])
        env.update(extra or {})
        return env

    def install(self, *wheels: Path) -> None:
        run([self.python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
             "--disable-pip-version-check", "--quiet", *wheels], cwd=self.root, env=self.env(),
            check=True)

    def ezpz(self, *args: str, cwd: Path, env: Mapping[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``ezpz ARGS`` with this venv's console script, as a user would type it."""
        return run([self.bin / "ezpz", *args], cwd=cwd, env=self.env(env), timeout=timeout)


def ezpz_wheel(factory: pytest.TempPathFactory) -> Path:
    """ezpz itself, built once per session from this working tree."""
    if "ezpz" not in _cache:
        source = copy_sources(ROOT, factory.mktemp("src") / "ezpz", EZPZ_SOURCES)
        [_cache["ezpz"]] = build_wheels([source], factory.mktemp("wheels"))
    return Path(_cache["ezpz"])


def example_wheel(factory: pytest.TempPathFactory) -> Path:
    """``examples/ezpz-plugin-example``, built once per session."""
    if "example" not in _cache:
        source = copy_sources(EXAMPLE, factory.mktemp("src") / "example")
        [_cache["example"]] = build_wheels([source], factory.mktemp("wheels"))
    return Path(_cache["example"])


def scaffold_wheel(factory: pytest.TempPathFactory, name: str = "demo") -> tuple[Path, Path]:
    """What ``ezpz plugin new NAME`` writes, and its wheel; once per session."""
    key = f"scaffold-{name}"
    if key not in _cache:
        from ezpz_core import scaffold

        project = scaffold.write(name, factory.mktemp("scaffold") / f"ezpz-{name}")
        build = copy_sources(project, factory.mktemp("src") / f"ezpz-{name}")
        [wheel] = build_wheels([build], factory.mktemp("wheels"))
        _cache[key] = (project, wheel)
    return _cache[key]


def venv_with(factory: pytest.TempPathFactory, key: str, wheels: Sequence[Path]) -> Venv:
    """A venv holding ezpz and ``wheels``, created once per session under ``key``."""
    if key not in _cache:
        venv = Venv(factory.mktemp(key) / "venv")
        venv.install(ezpz_wheel(factory), *wheels)
        _cache[key] = venv
    venv: Venv = _cache[key]
    return venv
