"""The Trainer: a plain PyTorch loop whose every decision point is a hook.

The loop itself does only what every run needs (device placement, autocast,
backward, accumulation, clipping, the optimizer step) and keeps the per-step
path free of device syncs: losses stay on the device until a logging step.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from ezpz_core import dist
from ezpz_core.config import TrainConfig
from ezpz_core.errors import ConfigError, DataError, PluginError
from ezpz_core.plugins import Plugins
from ezpz_core.rng import seed_everything
from ezpz_core.types import Data, FitResult

T = TypeVar("T")

#: Hooks the loop calls per step or per batch: skipped entirely when nobody implements them.
PER_STEP_HOOKS = ("on_step_end", "on_log")


def _with_last(items: Iterable[T]) -> Iterator[tuple[T, bool]]:
    """Yield ``(item, is_last)`` so the loop knows an epoch's final step when it takes it."""
    iterator = iter(items)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for upcoming in iterator:
        yield current, False
        current = upcoming
    yield current, True


def _batch_size(batch: Any) -> int:
    while isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if isinstance(batch, Mapping) and batch:
        return _batch_size(next(iter(batch.values())))
    shape = getattr(batch, "shape", None)
    return int(shape[0]) if shape else 1


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(item, device) for item in batch)
    if isinstance(batch, Mapping):
        return {key: _to_device(value, device) for key, value in batch.items()}
    return batch


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "xpu":
        return torch.bfloat16
    return None


class Trainer:
    """Train a model, given as an ``nn.Module`` or as a registered model name.

    ``Trainer(model, config, loss_fn=..., plugins=[...]).fit(train, eval)``
    trains any module on ``(inputs, targets)`` batches; ``Trainer("mnist")``
    builds the model and its data through the plugin that registered it.
    Each Trainer has its own plugin manager, so Trainers never share state.
    """

    def __init__(
        self,
        model: torch.nn.Module | str,
        config: TrainConfig | None = None,
        *,
        model_config: Any = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        plugins: Sequence[object] = (),
        block: Iterable[str] = (),
        autoload: bool | None = None,
    ) -> None:
        self.config = config or TrainConfig()
        self.plugins = Plugins(plugins, autoload=autoload, block=block)
        self.plugins.raise_for_failures()
        self.model_name: str | None = model if isinstance(model, str) else None
        self.module: torch.nn.Module | None = None if isinstance(model, str) else model
        self.model_config = model_config
        if self.model_name is not None:
            spec, _ = self.plugins.spec(self.model_name)
            if model_config is None and spec.config is not None:
                self.model_config = spec.config()
        self.hooks = self.plugins.hooks(self.model_name)
        self.loss_fn = loss_fn or F.cross_entropy
        self.device = torch.device(self.config.device or dist.get_torch_device())
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.out_dir = Path(self.config.out_dir) if self.config.out_dir else None

        self.model: torch.nn.Module | None = None
        self.data: Data | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.scaler: torch.amp.GradScaler | None = None
        self.total_steps: int | None = None
        self.step = 0
        self.epoch = 0
        self.should_stop = False
        self.train_metrics: dict[str, float] = {}
        self.eval_metrics: dict[str, float] = {}

        self._autocast_dtype = _autocast_dtype(self.config.precision, self.device)
        self._losses: list[torch.Tensor] = []
        self._extras: dict[str, list[torch.Tensor]] = {}
        self._samples = 0
        self._grad_norm: torch.Tensor | None = None
        self._interval_start = 0.0
        self._interval_steps = 0
        self._start_time = 0.0

    # --- setup ---------------------------------------------------------------

    def setup(self, train: Iterable[Any] | None = None, eval: Iterable[Any] | None = None) -> None:
        """Build data, model and optimizer; ``fit`` calls this, and it is safe to call first."""
        if self.optimizer is not None:
            return
        seed_everything(self.config.seed)
        if train is not None:
            self.data = Data(train, eval)
        elif self.data is None:
            if self.model_name is None:
                raise DataError("fit() needs training data when the model is an nn.Module")
            self.data = self.hooks.build_data(trainer=self)
            if self.data is None:
                raise PluginError(f"no plugin builds data for model '{self.model_name}'")
        if self.module is None:
            seed_everything(self.config.seed)
            self.module = self.hooks.build_model(trainer=self)
            if self.module is None:
                raise PluginError(f"no plugin builds model '{self.model_name}'")
        self.module.to(self.device)
        compiled = torch.compile(self.module) if self.config.compile else self.module
        self.model = compiled  # type: ignore[assignment]
        self.total_steps = self._count_steps()
        built = self.hooks.configure_optimizers(trainer=self, model=self.module)
        self.optimizer, self.scheduler = built if isinstance(built, tuple) else (built, None)
        if self.config.precision == "fp16" and self.device.type == "cuda":
            self.scaler = torch.amp.GradScaler("cuda")
        if self.out_dir is not None and self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)

    def _count_steps(self) -> int | None:
        config = self.config
        assert self.data is not None
        try:
            batches = len(self.data.train)  # type: ignore[arg-type]
        except TypeError:
            batches = None
        per_epoch = math.ceil(batches / config.grad_accum) if batches is not None else None
        if per_epoch == 0:
            raise DataError("the training data is empty")
        if per_epoch is None and config.max_steps is None:
            raise ConfigError("the training data has no length; set max_steps")
        epochs = self._epochs()
        by_epochs = per_epoch * epochs if (per_epoch is not None and epochs is not None) else None
        if config.max_steps is None:
            return by_epochs
        return min(config.max_steps, by_epochs) if by_epochs is not None else config.max_steps

    def _epochs(self) -> int | None:
        if self.config.epochs is not None:
            return self.config.epochs
        return None if self.config.max_steps is not None else 1

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The mixed-precision context the loop runs forward passes in."""
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast_dtype)

    # --- the loop ------------------------------------------------------------

    def fit(
        self, train: Iterable[Any] | None = None, eval: Iterable[Any] | None = None
    ) -> FitResult:
        """Train to ``max_steps``/``epochs``; returns the final train and eval metrics."""
        self.setup(train, eval)
        try:
            self.hooks.on_train_start(trainer=self)
            self._start_time = time.perf_counter()
            self._train()
            result = FitResult(
                step=self.step,
                epoch=self.epoch,
                train=dict(self.train_metrics),
                eval=dict(self.eval_metrics),
                elapsed_s=time.perf_counter() - self._start_time,
            )
            self.hooks.on_train_end(trainer=self, result=result)
        except BaseException as error:
            self.hooks.on_exception(trainer=self, error=error)
            raise
        return result

    def _train(self) -> None:
        assert self.data is not None and self.model is not None
        epochs = self._epochs()
        self._interval_start = time.perf_counter()
        while not self._finished():
            self._set_epoch(self.data.train, self.epoch)
            self.hooks.on_epoch_start(trainer=self, epoch=self.epoch)
            self._train_epoch(self.data.train)
            self.hooks.on_epoch_end(trainer=self, epoch=self.epoch)
            if self._finished() or (epochs is not None and self.epoch + 1 >= epochs):
                return
            self.epoch += 1

    def _finished(self) -> bool:
        return self.should_stop or (self.total_steps is not None and self.step >= self.total_steps)

    @staticmethod
    def _set_epoch(loader: Iterable[Any], epoch: int) -> None:
        for holder in (loader, getattr(loader, "batch_sampler", None)):
            set_epoch = getattr(getattr(holder, "sampler", None), "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)

    def _train_epoch(self, loader: Iterable[Any]) -> None:
        assert self.model is not None and self.optimizer is not None
        model, optimizer, accum = self.model, self.optimizer, self.config.grad_accum
        train_step = self.hooks.train_step
        move = None if self.device.type == "cpu" else self.device
        wants_step_end = bool(self.hooks.on_step_end.get_hookimpls())
        micro = 0
        model.train()
        for batch_idx, (batch, last) in enumerate(_with_last(loader)):
            if move is not None:
                batch = _to_device(batch, move)
            with self.autocast():
                out = train_step(trainer=self, model=model, batch=batch, batch_idx=batch_idx)
            if out is None:
                raise PluginError("no train_step hook returned a loss")
            loss = out[0] if isinstance(out, tuple) else out
            if isinstance(out, tuple):
                for key, value in out[1].items():
                    self._extras.setdefault(key, []).append(value.detach())
            scaled = loss / accum if accum > 1 else loss
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            self._losses.append(loss.detach())
            self._samples += _batch_size(batch)
            micro += 1
            if micro < accum and not last:
                continue
            micro = 0
            self._optimizer_step(optimizer)
            self.step += 1
            self._interval_steps += 1
            end_of_run = self.total_steps is not None and self.step >= self.total_steps
            if self.step % self.config.log_every == 0 or end_of_run or self.should_stop:
                self._log_train()
            if self._eval_due(last, end_of_run):
                self.evaluate()
            if wants_step_end:
                self.hooks.on_step_end(trainer=self, step=self.step)
            if end_of_run or self.should_stop:
                return

    def _optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        assert self.module is not None
        config = self.config
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if config.grad_clip > 0:
            self._grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(),
                                                             config.grad_clip)
        elif (self.step + 1) % config.log_every == 0:
            grads = [p.grad for p in self.module.parameters() if p.grad is not None]
            self._grad_norm = torch.nn.utils.get_total_norm(grads) if grads else None
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    def _eval_due(self, end_of_epoch: bool, end_of_run: bool) -> bool:
        assert self.data is not None
        if self.data.eval is None:
            return False
        every = self.config.eval_every
        if every is not None:
            return self.step % every == 0 or end_of_run
        return end_of_epoch or end_of_run or self.should_stop

    # --- metrics -------------------------------------------------------------

    def _log_train(self) -> None:
        """Turn the interval's on-device losses into floats: the only sync in training."""
        if not self._losses:
            return
        now = time.perf_counter()
        elapsed = max(now - self._interval_start, 1e-9)
        values = [torch.stack(self._losses).mean()]
        names = ["train/loss"]
        for key, items in self._extras.items():
            values.append(torch.stack(items).float().mean())
            names.append(f"train/{key}")
        if self._grad_norm is not None:
            values.append(self._grad_norm.float())
            names.append("train/grad_norm")
        stacked = dist.all_reduce_mean(torch.stack([v.float() for v in values]))
        metrics = dict(zip(names, stacked.tolist(), strict=True))
        assert self.optimizer is not None
        samples_per_sec = self._samples * self.world_size / elapsed
        metrics["train/lr"] = float(self.optimizer.param_groups[0]["lr"])
        metrics["train/samples_per_sec"] = samples_per_sec
        metrics["train/step_ms"] = 1000.0 * elapsed / max(self._interval_steps, 1)
        metrics["train/epoch"] = float(self.epoch)
        self._add_throughput(metrics, samples_per_sec)
        self._losses, self._extras, self._samples, self._grad_norm = [], {}, 0, None
        self._interval_steps, self._interval_start = 0, time.perf_counter()
        self.train_metrics = metrics
        self.log(metrics)

    def _add_throughput(self, metrics: dict[str, float], samples_per_sec: float) -> None:
        """Tokens/s from the data's ``tokens_per_sample``; FLOP/s where the model can count."""
        assert self.data is not None
        tokens_per_sample = self.data.meta.get("tokens_per_sample")
        if not tokens_per_sample:
            return
        tokens_per_sec = samples_per_sec * tokens_per_sample
        metrics["train/tokens_per_sec"] = tokens_per_sec
        flops_per_token = getattr(self.module, "flops_per_token", None)
        if not callable(flops_per_token):
            return
        from ezpz_core import flops

        per_device = tokens_per_sec / self.world_size
        metrics["train/tflops"] = flops_per_token() * per_device / 1e12
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else ""
        utilisation = flops.mfu(flops_per_token(), per_device, name)
        if utilisation is not None:
            metrics["train/mfu"] = utilisation

    def log(self, metrics: Mapping[str, float]) -> None:
        """Send a metrics record to every plugin's ``on_log`` at the current step."""
        self.hooks.on_log(trainer=self, step=self.step, metrics=metrics)

    @torch.no_grad()
    def evaluate(self, loader: Iterable[Any] | None = None) -> dict[str, float]:
        """Average ``eval_step`` metrics over the eval data (or ``loader``), weighted by batch."""
        assert self.model is not None
        if loader is None:
            assert self.data is not None
            loader = self.data.eval
        if loader is None:
            return {}
        model, limit, started = self.model, self.config.eval_batches, time.perf_counter()
        move = None if self.device.type == "cpu" else self.device
        sums: dict[str, torch.Tensor] = {}
        count = 0
        model.eval()
        try:
            for batch_idx, batch in enumerate(loader):
                if limit is not None and batch_idx >= limit:
                    break
                if move is not None:
                    batch = _to_device(batch, move)
                with self.autocast():
                    out = self.hooks.eval_step(
                        trainer=self, model=model, batch=batch, batch_idx=batch_idx
                    )
                if out is None:
                    raise PluginError("no eval_step hook returned metrics")
                size = _batch_size(batch)
                for key, value in out.items():
                    weighted = torch.as_tensor(value).detach().float() * size
                    sums[key] = sums[key] + weighted if key in sums else weighted
                count += size
        finally:
            model.train()
        if count == 0:
            raise DataError("the evaluation data is empty")
        names = list(sums)
        totals = torch.stack([sums[k] for k in names] + [torch.tensor(float(count),
                                                                      device=self.device)])
        totals = dist.all_reduce_sum(totals)
        means = (totals[:-1] / totals[-1]).tolist()
        metrics = {f"eval/{key}": value for key, value in zip(names, means, strict=True)}
        self.eval_metrics = metrics
        self._interval_start += time.perf_counter() - started  # throughput counts training only
        self.hooks.on_eval_end(trainer=self, step=self.step, metrics=metrics)
        self.log(metrics)
        return metrics
