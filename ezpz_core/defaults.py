"""ezpz's generic fallbacks: any ``nn.Module`` trains with no plugin at all.

Registered first and marked ``trylast``, so every plugin can override them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ezpz_core.errors import DataError
from ezpz_core.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch

    from ezpz_core.trainer import Trainer


def _split(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise DataError(
        f"the default train/eval step expects (inputs, targets) batches, got {type(batch).__name__}"
        "; implement the train_step/eval_step hooks for other batch shapes"
    )


@hookimpl(trylast=True)
def train_step(trainer: Trainer, model: torch.nn.Module, batch: Any) -> torch.Tensor:
    inputs, targets = _split(batch)
    return trainer.loss_fn(model(inputs), targets)


@hookimpl(trylast=True)
def eval_step(trainer: Trainer, model: torch.nn.Module, batch: Any) -> Mapping[str, Any]:
    inputs, targets = _split(batch)
    outputs = model(inputs)
    metrics = {"loss": trainer.loss_fn(outputs, targets)}
    is_class_scores = outputs.dim() == 2 and outputs.shape[0] == targets.shape[0]
    if is_class_scores and targets.dim() == 1 and not targets.is_floating_point():
        metrics["accuracy"] = (outputs.argmax(dim=1) == targets).float().mean()
    return metrics


def lr_factor(step: int, *, warmup: int, decay: int, min_ratio: float, cosine: bool) -> float:
    """Multiplier of the peak lr at ``step``: linear warmup, then cosine to the floor."""
    if step < warmup:
        return (step + 1) / warmup
    if not cosine:
        return 1.0
    if step >= decay:
        return min_ratio
    progress = (step - warmup) / max(1, decay - warmup)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@hookimpl(trylast=True)
def configure_optimizers(trainer: Trainer, model: torch.nn.Module) -> Any:
    import functools

    import torch

    config = trainer.config
    params = [p for p in model.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": params, "weight_decay": 0.0}]
    if config.weight_decay > 0:
        # Decaying biases and norm gains hurts; matrices (embeddings, weights) are what decay
        # is for. Without decay one group suffices, and halves the optimizer's Python work.
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
    fused = {"fused": True} if trainer.device.type == "cuda" else {}
    optimizer: torch.optim.Optimizer
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.beta1)
    elif config.optimizer == "adam":
        optimizer = torch.optim.Adam(groups, lr=config.lr, betas=(config.beta1, config.beta2),
                                     **fused)
    else:
        optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2),
                                      **fused)
    if config.schedule == "constant" and config.warmup_steps == 0:
        return optimizer
    factor = functools.partial(
        lr_factor,
        warmup=config.warmup_steps,
        decay=config.decay_steps or trainer.total_steps or 0,
        min_ratio=config.min_lr / config.lr,
        cosine=config.schedule == "cosine",
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
