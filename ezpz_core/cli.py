"""The ``ezpz`` command line.

Imports stay light until a command needs torch, so ``ezpz --help``,
``ezpz models`` and ``ezpz plugins`` start fast. A user mistake is one line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from ezpz_core import doctor, export, launch, runs, scaffold
from ezpz_core.errors import ConfigError, EzpzError
from ezpz_core.logs import configure_logging

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped by the scheduler's signal, resumable
PLUGIN_HELP = "skip a plugin by entry-point or distribution name (repeatable; built-ins too)"


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ezpz")
    except metadata.PackageNotFoundError:
        return "unknown"


def _option_type(annotation: Any) -> Any:
    """The scalar type of an attrs field (``int | None`` -> int)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args and (typing.get_origin(annotation) in (typing.Union, types.UnionType)):
        return args[0]
    return annotation


def _add_fields(group: Any, cls: type, taken: set[str], prefix: str = "") -> dict[str, str]:
    """Add one ``--option`` per attrs field; returns dest -> field name."""
    dests: dict[str, str] = {}
    for field in attrs.fields(attrs.resolve_types(cls)):
        flag = field.name.replace("_", "-")
        if flag in taken:
            flag = f"{prefix}{flag}"
        taken.add(flag)
        dest = f"{prefix.replace('-', '_')}{field.name}"
        kind = _option_type(field.type)
        help_text = field.metadata.get("help", "")
        default = field.default if field.default is not attrs.NOTHING else None
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = None
        help_text = f"{help_text} (default: {default})" if default is not None else help_text
        if kind is bool:
            group.add_argument(f"--{flag}", dest=dest, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(f"--{flag}", dest=dest, type=kind, default=argparse.SUPPRESS,
                               metavar=field.name.upper(), help=help_text)
        dests[dest] = field.name
    return dests


def _block_list(values: Sequence[str] | None) -> list[str]:
    return [name.strip() for value in values or () for name in value.split(",") if name.strip()]


def _load_plugins(block: Sequence[str] | None) -> Any:
    from ezpz_core.plugins import Plugins

    return Plugins(block=_block_list(block))


def _warn_failures(plugins: Any) -> None:
    for failure in plugins.failures:
        print(f"ezpz: warning: {failure.message}", file=sys.stderr)


# --- commands ----------------------------------------------------------------


def _train_parser(spec: Any) -> tuple[argparse.ArgumentParser, dict[str, str], dict[str, str]]:
    from ezpz_core.config import TrainConfig

    name = spec.name if spec is not None else "MODEL"
    parser = argparse.ArgumentParser(
        prog=f"ezpz train {name}",
        description=spec.description if spec is not None else "Train a registered model.",
    )
    parser.add_argument("model", help="model name (see `ezpz models`)")
    parser.add_argument("--config", metavar="FILE", help="TOML file with [train] and [model]")
    parser.add_argument("--block", action="append", metavar="NAME", help=PLUGIN_HELP)
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                        help="continue from the newest complete checkpoint in --out-dir "
                             "(starting fresh if there is none), or from CHECKPOINT")
    parser.add_argument("--nproc", type=int, metavar="N",
                        help="run N local processes with DDP/FSDP (shortcut for ezpz launch)")
    parser.add_argument("--profile-hooks", action="store_true",
                        help="at the end, print the time each plugin spent in each hook "
                             "(or EZPZ_PROFILE_HOOKS=1)")
    taken = {"config", "block", "quiet", "help", "resume", "nproc", "profile-hooks"}
    train_dests = _add_fields(parser.add_argument_group("training"), TrainConfig, taken)
    model_dests: dict[str, str] = {}
    if spec is not None and spec.config is not None:
        group = parser.add_argument_group(f"{spec.name} options")
        model_dests = _add_fields(group, spec.config, taken, prefix="model-")
    return parser, train_dests, model_dests


def cmd_train(argv: Sequence[str]) -> int:
    from ezpz_core.config import TrainConfig, build, read_toml

    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("model", nargs="?")
    peek.add_argument("--block", action="append")
    peek.add_argument("--nproc", type=int)
    known, _ = peek.parse_known_args(argv)
    if known.nproc is not None and "RANK" not in os.environ:
        return _relaunch(argv, known.nproc)
    if known.model is None or known.model.startswith("-"):
        parser, _, _ = _train_parser(None)
        if any(a in ("-h", "--help") for a in argv):
            parser.print_help()
            return 0
        parser.error("the following arguments are required: model")
    plugins = _load_plugins(known.block)
    plugins.raise_for_failures()
    spec, _ = plugins.spec(known.model)
    parser, train_dests, model_dests = _train_parser(spec)
    args = parser.parse_args(argv)

    file = read_toml(args.config) if args.config else {}
    if file.get("name", spec.name) != spec.name:
        raise ConfigError(f"{args.config} is for model '{file['name']}', not '{spec.name}'")
    given = vars(args)
    train_values = {**spec.train_defaults, **file.get("train", {})}
    train_values.update({field: given[d] for d, field in train_dests.items() if d in given})
    if args.resume not in (None, "latest"):  # continue in the run the checkpoint belongs to
        train_values.setdefault("out_dir", str(Path(args.resume).resolve().parent.parent))
    train_values.setdefault(
        "out_dir", os.path.join("runs", f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    )
    model_values = {**file.get("model", {})}
    model_values.update({field: given[d] for d, field in model_dests.items() if d in given})
    config = build(TrainConfig, train_values, "train")
    if spec.config is None and model_values:
        raise ConfigError(f"model '{spec.name}' takes no [model] options")
    model_config = build(spec.config, model_values, "model") if spec.config else None

    from ezpz_core import profile
    from ezpz_core.trainer import Trainer

    block = _block_list(args.block) + (["console"] if args.quiet else [])
    trainer = Trainer(spec.name, config, model_config=model_config, block=block)
    timing = profile.HookProfile(trainer.plugins) if profile.wanted(args.profile_hooks) else None
    try:
        result = trainer.fit(resume=args.resume)
    except Exception as error:  # a plugin's bug: one line naming it, not a traceback
        blamed = trainer.plugins.blame(error)
        if blamed is None:
            raise
        raise blamed from error
    finally:
        if timing is not None and trainer.rank == 0:
            timing.report()
    if trainer.stop_reason is not None:
        if trainer.rank == 0:
            print(f"ezpz: stopped by {trainer.stop_reason} at step {result.step}; checkpoint "
                  f"saved in {config.out_dir}; rerun with --resume to continue", file=sys.stderr)
        return EXIT_STOPPED
    if trainer.rank == 0:
        print(f"finished {spec.name}: {result.step} steps, {result.epoch + 1} epoch(s) "
              f"in {result.elapsed_s:.1f}s")
        for key, value in sorted(result.metrics.items()):
            print(f"  {key:<24} {value:.6g}")
        print(f"  out dir: {config.out_dir}")
    return 0


def _relaunch(argv: Sequence[str], nproc: int) -> int:
    """``ezpz train ... --nproc N``: the same command under torchrun, without ``--nproc``."""
    from ezpz_core.launch import build_command, run_command

    rest: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    return run_command(build_command(["ezpz", "train", *rest], nproc))


def cmd_models(args: argparse.Namespace, loaded: Any) -> int:
    plugins = _load_plugins(args.block) if args.block else loaded
    _warn_failures(plugins)
    rows = [(name, info.name, spec.description) for name, (spec, info) in
            sorted(plugins.models.items())]
    if args.json:
        print(json.dumps([{"name": n, "plugin": p, "description": d} for n, p, d in rows],
                         indent=2))
        return 0
    _print_table(("model", "plugin", "description"), rows)
    return 0


def cmd_plugins(args: argparse.Namespace, loaded: Any) -> int:
    plugins = _load_plugins(args.block) if args.block else loaded
    rows = [row for row in plugins.describe() if args.all or not row["builtin"]]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    _warn_failures(plugins)
    if not rows:
        print("no third-party plugins installed (--all lists the built-ins)")
        return 0
    table = [(r["name"], r["distribution"] or "-", r["version"] or "-",
              ", ".join(r["hooks"]) or ("BROKEN" if r["error"] else "-"),
              r.get("path") or r["source"] or "-") for r in rows]
    _print_table(("plugin", "distribution", "version", "hooks", "loaded from"), table)
    return 0


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join(cells).rstrip())


def _parser(plugins: Any) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ezpz", description="ezpz: a plugin-based PyTorch trainer."
    )
    parser.add_argument("--version", action="version", version=f"ezpz {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("train", help="train a model (ezpz train MODEL --help)", add_help=False)
    models = sub.add_parser("models", help="list the models plugins provide")
    listing = sub.add_parser("plugins", help="list installed plugins and their hooks")
    for command in (models, listing):
        command.add_argument("--json", action="store_true", help="machine-readable output")
        command.add_argument("--block", action="append", metavar="NAME", help=PLUGIN_HELP)
    listing.add_argument("--all", action="store_true", help="include the built-in plugins")
    launch.add_parser(sub)
    doctor.add_parser(sub)
    export.add_parser(sub)
    runs.add_parser(sub)
    scaffold.add_parser(sub)
    plugins.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        configure_logging()
        if argv and argv[0] == "train":
            return cmd_train(argv[1:])
        loaded = _load_plugins(None)
        parser = _parser(loaded)
        args = parser.parse_args(argv)
        if args.command == "models":
            return cmd_models(args, loaded)
        if args.command == "plugins":
            return cmd_plugins(args, loaded)
        handler = getattr(args, "handler", None)
        if handler is not None:
            return int(handler(args))
        parser.print_help()
        return 0
    except EzpzError as error:
        print(f"ezpz: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ezpz: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
