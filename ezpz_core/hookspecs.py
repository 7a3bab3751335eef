"""The plugin contract: every hook ezpz calls, in the order a fit calls them.

Each spec's docstring is its reference documentation. Plugins implement hooks
with ``@ezpz.hookimpl`` on plain functions (a module) or methods (a class the
entry point names; ezpz makes one instance per Trainer). An implementation may
accept any subset of a spec's arguments.

Call order within one fit::

    on_train_start
    on_epoch_start(epoch)
        train_step(batch) ...        one per micro-batch, first result wins
        on_log(train metrics)        every ``log_every`` optimizer steps
        eval_step(batch) ...         when evaluation is due
        on_eval_end(metrics)
        on_log(eval metrics)
        on_step_end(step)            after that step's logging and evaluation
    on_epoch_end(epoch)              after the epoch's last evaluation
    on_train_end(result)
    on_exception(error)              instead of the rest, when the fit raises

A plugin that registers models is called only by Trainers of its own models
(it may register several and tell them apart by ``trainer.model_name``);
plugins that register no model are called by every Trainer. So a model's
plugin never acts on another model's run. Several implementations of a hook run
last-registered-first: built-ins load before third-party plugins, so an
installed plugin overrides a built-in, and both override ezpz's generic
fallbacks (``trylast``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch

    from ezpz_core.trainer import Trainer
    from ezpz_core.types import Data, FitResult, ModelSpec

PROJECT = "ezpz"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Hooks every loaded plugin sees, whichever model a Trainer runs.
GLOBAL_HOOKS = ("register_models", "register_commands")


# --- Discovery -------------------------------------------------------------


@hookspec
def register_models(register: Callable[[ModelSpec], None]) -> None:
    """Declare the models this plugin provides by calling ``register(ModelSpec(...))``.

    Called once when plugins load, without importing torch, so keep it cheap:
    ``ezpz models`` lists what is registered here. Two plugins registering the
    same name is an error that names both distributions.
    """


@hookspec
def register_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ezpz`` subcommands: ``subparsers.add_parser(name, help=...)``.

    Give the new parser ``set_defaults(handler=function)``; the function takes
    the parsed ``argparse.Namespace`` and returns the exit status. Import heavy
    modules inside the handler so ``ezpz --help`` stays fast.
    """


# --- Building a run (first result wins) ---------------------------------------


@hookspec(firstresult=True)
def build_data(trainer: Trainer) -> Data | None:
    """Return the default training and evaluation data for ``trainer.model_name``.

    Called before ``build_model`` so data-dependent sizes (a vocabulary) can
    reach the model through ``Data.meta``. Only called when ``fit`` is given
    no loaders. Return None to let another plugin answer.
    """


@hookspec(firstresult=True)
def build_model(trainer: Trainer) -> torch.nn.Module | None:
    """Return a new ``nn.Module`` for ``trainer.model_name`` and ``trainer.model_config``.

    ``trainer.data`` is available. Return None when the name is not yours.
    """


@hookspec(firstresult=True)
def configure_optimizers(
    trainer: Trainer, model: torch.nn.Module
) -> torch.optim.Optimizer | tuple[torch.optim.Optimizer, Any] | None:
    """Return an optimizer, or ``(optimizer, lr_scheduler)``, for ``model``.

    The fallback builds the configured AdamW/Adam/SGD with weight decay on
    matrices only and a warmup + cosine (or constant) schedule.
    """


# --- The loop (first result wins) ---------------------------------------------


@hookspec(firstresult=True)
def train_step(
    trainer: Trainer, model: torch.nn.Module, batch: Any, batch_idx: int
) -> torch.Tensor | tuple[torch.Tensor, Mapping[str, torch.Tensor]] | None:
    """Compute the loss of one micro-batch, already on ``trainer.device``.

    Return the scalar loss, or ``(loss, metrics)`` where metrics are scalar
    tensors reported at logging steps as ``train/<name>``. ezpz runs
    backward, gradient accumulation, clipping and the optimizer step, inside
    autocast when mixed precision is on. Do not call ``.item()`` here: it forces
    a device sync every step. The fallback handles ``(inputs, targets)`` batches
    with the Trainer's ``loss_fn``.
    """


@hookspec(firstresult=True)
def eval_step(
    trainer: Trainer, model: torch.nn.Module, batch: Any, batch_idx: int
) -> Mapping[str, torch.Tensor] | None:
    """Return this batch's mean metrics, e.g. ``{"loss": ..., "accuracy": ...}``.

    Runs under ``torch.no_grad`` with the model in eval mode. ezpz averages
    them over the evaluation set, weighted by batch size, and reports them as
    ``eval/<name>``. The fallback reports loss, plus accuracy for
    classification outputs.
    """


# --- Lifecycle (every implementation is called) -------------------------------


@hookspec
def on_train_start(trainer: Trainer) -> None:
    """The model, optimizer and data are ready and the first step is next.

    ``trainer.step`` is non-zero when the run resumed from a checkpoint.
    """


@hookspec
def on_epoch_start(trainer: Trainer, epoch: int) -> None:
    """A pass over the training data begins (epochs count from 0)."""


@hookspec
def on_step_end(trainer: Trainer, step: int) -> None:
    """Optimizer step ``step`` (counting from 1) is complete.

    Runs after that step's ``on_log`` and evaluation, so state seen here is
    final for the step; checkpointing belongs here (mark it ``trylast``).
    """


@hookspec
def on_eval_end(trainer: Trainer, step: int, metrics: Mapping[str, float]) -> None:
    """An evaluation finished; ``metrics`` are keyed ``eval/<name>``."""


@hookspec
def on_epoch_end(trainer: Trainer, epoch: int) -> None:
    """The pass over the training data ended, after its last evaluation."""


@hookspec
def on_log(trainer: Trainer, step: int, metrics: Mapping[str, float]) -> None:
    """A metrics record: every plugin sees every record.

    Train records come every ``log_every`` steps with ``train/loss`` (the
    logging step's loss, averaged over its micro-batches and ranks),
    ``train/lr``, ``train/samples_per_sec`` (over the interval) and friends;
    eval records carry ``eval/*``. Values are Python floats, already
    synchronised from the device.
    """


@hookspec
def on_log_text(trainer: Trainer, step: int, tag: str, text: str) -> None:
    """A text record, such as a generated sample; every plugin sees every record."""


@hookspec
def on_train_end(trainer: Trainer, result: FitResult) -> None:
    """The fit finished normally; ``result`` holds the final metrics."""


@hookspec
def on_exception(trainer: Trainer, error: BaseException) -> None:
    """The fit is ending with ``error`` (including KeyboardInterrupt).

    Flush and close what you hold; the error is re-raised afterwards.
    """


# --- Checkpoint state ---------------------------------------------------------


@hookspec
def on_save_checkpoint(trainer: Trainer, checkpoint: dict[str, Any]) -> None:
    """Add this plugin's state to ``checkpoint`` under a key of its own.

    Values must be tensors, numbers, strings, lists or dicts: checkpoints load
    with ``weights_only=True``, which refuses arbitrary objects.
    """


@hookspec
def on_load_checkpoint(trainer: Trainer, checkpoint: Mapping[str, Any]) -> None:
    """Restore this plugin's state from a checkpoint being resumed."""


def hook_names() -> Iterable[str]:
    """Names of every hook spec, in the order they are documented above."""
    return [
        name
        for name, value in globals().items()
        if callable(value) and hasattr(value, f"{PROJECT}_spec")
    ]
