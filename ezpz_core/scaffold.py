"""``ezpz plugin new NAME``: write a plugin package that trains as soon as it is installed.

The package is what docs/plugins.md builds by hand: a ``pyproject.toml``
declaring the ``ezpz`` entry point, a plugin module with a small model on
generated data, and a test. Its author replaces the model and the data and
keeps the wiring. Nothing heavy is imported here, so ``ezpz --help`` stays fast.
"""

from __future__ import annotations

import argparse
import re
import string
from pathlib import Path
from typing import Any

from ezpz_core.errors import EzpzError

NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "The $name model for ezpz"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["ezpz"]

[project.optional-dependencies]
test = ["pytest>=8"]

# How ezpz finds the plugin: `ezpz train $name` loads this module.
[project.entry-points.ezpz]
$name = "$package.plugin"

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

README = """\
# $dist

The `$name` model for ezpz, the plugin-based PyTorch trainer: a small classifier
on generated data, ready to be replaced by yours.

```bash
python -m pip install -e .        # ezpz finds the plugin through its entry point
ezpz models                       # lists $name
ezpz train $name --max-steps 5
python -m pytest
```

Edit `src/$package/plugin.py`: `build_data` returns your data, `build_model` your
`torch.nn.Module`, and `$options` holds the options `ezpz train $name --help` shows.
Every hook you can add is described in ezpz's `docs/plugins.md`.
"""

PLUGIN = '''\
"""The $name model for ezpz: an MLP classifier on generated data.

ezpz loads this module through the ``ezpz`` entry point in pyproject.toml.
Replace ``build_data`` and ``build_model`` with your own; the default
``train_step`` and ``eval_step`` handle ``(inputs, targets)`` batches with
cross-entropy and report accuracy, so a classifier needs nothing more.
torch is imported inside the hooks so that ``ezpz models`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import ezpz

if TYPE_CHECKING:
    import torch

MODEL = "$name"


@attrs.define(frozen=True)
class $options:
    """Each field becomes ``ezpz train $name --FIELD`` and a ``[model]`` key in a config file."""

    features: int = attrs.field(default=16, metadata={"help": "input features"})
    classes: int = attrs.field(default=4, metadata={"help": "classes to tell apart"})
    hidden: int = attrs.field(default=64, metadata={"help": "hidden units"})
    samples: int = attrs.field(default=2048, metadata={"help": "generated training samples"})


@ezpz.hookimpl
def register_models(register: ezpz.Register) -> None:
    register(ezpz.ModelSpec(
        name=MODEL,
        description="an MLP classifier on generated clusters (replace it with yours)",
        config=$options,
        train_defaults={"epochs": 3, "batch_size": 64, "lr": 3e-3, "log_every": 10},
    ))


@ezpz.hookimpl
def build_data(trainer: ezpz.Trainer) -> ezpz.Data:
    """Gaussian clusters, one per class; each process keeps its own share of the samples."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    options: $options = trainer.model_config
    generator = torch.Generator().manual_seed(trainer.config.seed)
    centers = 2.0 * torch.randn(options.classes, options.features, generator=generator)

    def clusters(n: int) -> TensorDataset:
        labels = torch.randint(options.classes, (n,), generator=generator)
        inputs = centers[labels] + torch.randn(n, options.features, generator=generator)
        share = slice(trainer.rank, None, trainer.world_size)
        return TensorDataset(inputs[share], labels[share])

    batch_size = trainer.config.batch_size
    train = DataLoader(clusters(options.samples), batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(trainer.config.seed))
    evaluation = DataLoader(clusters(options.samples // 4),
                            batch_size=trainer.config.eval_batch_size or batch_size)
    return ezpz.Data(train, evaluation)


@ezpz.hookimpl
def build_model(trainer: ezpz.Trainer) -> torch.nn.Module:
    from torch import nn

    options: $options = trainer.model_config
    return nn.Sequential(
        nn.Linear(options.features, options.hidden),
        nn.ReLU(),
        nn.Linear(options.hidden, options.classes),
    )
'''

TEST = '''\
"""The $name plugin, installed, trains through ezpz like any built-in model."""

from __future__ import annotations

import math

import ezpz


def test_${identifier}_is_registered_and_trains_a_few_steps() -> None:
    trainer = ezpz.Trainer("$name", ezpz.TrainConfig(max_steps=5, log_every=1))
    result = trainer.fit()
    assert result.step == 5
    assert math.isfinite(result.train["train/loss"])
    assert 0.0 <= result.eval["eval/accuracy"] <= 1.0
'''


def names(name: str) -> dict[str, str]:
    """The names one plugin goes by: model, distribution, package, options class."""
    if not NAME_PATTERN.fullmatch(name):
        raise EzpzError(
            f"plugin name {name!r} must be lower-case letters and digits, optionally joined "
            "by '-' or '_', starting with a letter (e.g. 'mlp' or 'tiny-vit')"
        )
    identifier = name.replace("-", "_")
    camel = "".join(part.capitalize() for part in re.split(r"[-_]", name))
    return {"name": name, "identifier": identifier, "dist": f"ezpz-{name}",
            "package": f"ezpz_{identifier}", "options": f"{camel}Options"}


def files(name: str) -> dict[str, str]:
    """Relative path -> text of every file of the package for ``name``."""
    values = names(name)
    package = values["package"]
    templates = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"src/{package}/__init__.py": '"""The $name plugin for ezpz."""\n',
        f"src/{package}/plugin.py": PLUGIN,
        f"tests/test_{package}.py": TEST,
    }
    return {path: string.Template(text).substitute(values) for path, text in templates.items()}


def write(name: str, where: Path | None = None) -> Path:
    """Write the package for ``name`` into ``where`` (default ``./ezpz-NAME``); returns it.

    Refuses a folder that already holds files, and a model name an installed
    plugin already registers: installing the package would only produce a
    duplicate-model error.
    """
    rendered = files(name)  # validates the name first
    root = where if where is not None else Path(f"ezpz-{name}")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise EzpzError(f"{root} already exists and is not empty; choose another --dir")
    from ezpz_core.plugins import Plugins

    taken = Plugins().models.get(name)
    if taken is not None:
        raise EzpzError(f"model '{name}' is already registered by {taken[1].label}; "
                        "choose another name")
    for relative, text in rendered.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _handle(args: argparse.Namespace) -> int:
    root = write(args.name, Path(args.dir) if args.dir else None)
    print(f"created {root}/ with the '{args.name}' model plugin; next:\n"
          f"  cd {root} && python -m pip install -e .\n"
          f"  ezpz train {args.name} --max-steps 5\n"
          f"  python -m pytest")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ezpz plugin new NAME [--dir DIR]`` to the CLI's subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "plugin", help="tools for plugin authors (ezpz plugin new NAME)",
        description="Tools for writing ezpz plugins; docs/plugins.md is the guide.",
    )
    actions = parser.add_subparsers(dest="plugin_command", metavar="ACTION", required=True)
    new = actions.add_parser(
        "new", help="write a plugin package that trains once pip-installed",
        description="Write a plugin package: pyproject.toml with the ezpz entry point, a "
                    "module with a model, its data and its hooks, and a test. It trains with "
                    "`ezpz train NAME` right after `python -m pip install -e DIR`.",
    )
    new.add_argument("name", metavar="NAME", help="the model and plugin name, e.g. 'mlp'")
    new.add_argument("--dir", metavar="DIR", help="where to write it (default: ./ezpz-NAME)")
    new.set_defaults(handler=_handle)
    return parser
