"""The Trainer: a plain PyTorch loop whose every decision point is a hook.

The loop itself does only what every run needs (device placement, autocast,
backward, accumulation, clipping, the optimizer step) and keeps the per-step
path free of device syncs: losses stay on the device until a logging step.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ezpz_core import checkpoint, dist, parallel, resume
from ezpz_core.config import TrainConfig, to_dict
from ezpz_core.errors import ConfigError, DataError, PluginError
from ezpz_core.plugins import Plugins
from ezpz_core.rng import seed_everything
from ezpz_core.types import Data, FitResult


def _batch_size(batch: Any) -> int:
    while isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 1
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


def _mean(values: list[torch.Tensor]) -> torch.Tensor:
    """The mean of a step's micro-batch values as float32: no operator for the usual one."""
    if len(values) == 1:
        return values[0].detach().float()
    return torch.stack([v.detach().float() for v in values]).mean()


@functools.cache
def _versions() -> dict[str, str]:
    import platform
    from importlib import metadata

    return {"ezpz": metadata.version("ezpz"), "torch": str(torch.__version__),
            "python": platform.python_version()}


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
        self.world_size = dist.get_world_size()
        if self.world_size > 1:
            dist.setup_torch(timeout_s=self.config.dist_timeout)
        self.device = torch.device(self.config.device) if self.config.device else dist.get_device()
        self.rank = dist.get_rank()
        self.out_dir = Path(self.config.out_dir) if self.config.out_dir else None

        self.model: torch.nn.Module | None = None
        self.data: Data | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.scaler: torch.amp.GradScaler | None = None
        self.total_steps: int | None = None
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.should_stop = False
        self.stop_reason: str | None = None
        self._stop_requested = False
        self._stop_agreement: parallel.StopAgreement | None = None
        self.last_eval_step: int | None = None
        self.resumed_from: Path | None = None
        self.train_metrics: dict[str, float] = {}
        self.eval_metrics: dict[str, float] = {}

        self._autocast_dtype = _autocast_dtype(self.config.precision, self.device)
        self._losses: list[torch.Tensor] = []
        self._extras: dict[str, list[torch.Tensor]] = {}
        self._samples = 0
        self._grad_norm: torch.Tensor | None = None
        self._params: list[torch.nn.Parameter] = []
        self._interval_start = 0.0
        self._interval_steps = 0
        self._start_time = 0.0
        self._epoch_finished = False
        self._step_end: Callable[..., Any] = self.plugins.direct(self.hooks.on_step_end)
        self._has_eval = False
        self._epoch_rng: dict[str, Any] | None = None
        self._resume_epoch_rng: dict[str, Any] | None = None
        self._resume_step_rng: dict[str, Any] | None = None

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
        wrapped = parallel.wrap(self.module, self.config.strategy, self.device,
                                self._autocast_dtype)
        compiled = torch.compile(wrapped) if self.config.compile else wrapped
        self.model = compiled  # type: ignore[assignment]
        self._params = [p for p in self.module.parameters() if p.requires_grad]
        if self.world_size > 1:
            self._stop_agreement = parallel.StopAgreement()
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
        batches = resume.length(self.data.train)
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
        self,
        train: Iterable[Any] | None = None,
        eval: Iterable[Any] | None = None,
        *,
        resume: str | Path | None = None,
    ) -> FitResult:
        """Train to ``max_steps``/``epochs``; returns the final train and eval metrics.

        ``resume`` is a checkpoint directory, or ``"latest"`` for the newest
        complete checkpoint in ``out_dir`` (starting fresh when there is none).
        """
        self.setup(train, eval)
        if resume is not None:
            found = checkpoint.resolve(resume, self.out_dir)
            if found is not None:
                self.load_state_dict(checkpoint.load(found), source=found)
                self.resumed_from = found
        try:
            self.hooks.on_train_start(trainer=self)
            self._start_time = time.perf_counter()
            self._train()
            if self._stop_agreement is not None:
                self._stop_agreement.finish()
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
            if self._resume_epoch_rng is not None:
                self._set_rng(self._resume_epoch_rng)
                self._resume_epoch_rng = None
            self._epoch_rng = self._rng()
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
        model, accum = self.model, self.config.grad_accum
        train_step = self.plugins.direct(self.hooks.train_step)
        move = None if self.device.type == "cpu" else self.device
        self._step_end = self.plugins.direct(self.hooks.on_step_end)
        self._has_eval = self.data is not None and self.data.eval is not None
        wants_step_end = bool(self.hooks.on_step_end.get_hookimpls())
        n_batches = resume.length(loader)
        first = self.batch_in_epoch
        batches = resume.position(loader, first)
        iterator = iter(batches)
        resume.prepare(batches)
        if self._resume_step_rng is not None:
            self._set_rng(self._resume_step_rng)
            self._resume_step_rng = None
        micro = 0
        model.train()
        sync_every_micro_batch = self.world_size == 1 or accum == 1
        for batch_idx, batch in enumerate(iterator, first):
            self.batch_in_epoch = batch_idx + 1
            last = self.batch_in_epoch == n_batches
            if move is not None:
                batch = _to_device(batch, move)
            if sync_every_micro_batch:
                self._train_micro_batch(train_step, model, batch, batch_idx, accum)
            else:
                with parallel.no_sync(model, micro + 1 == accum or last):
                    self._train_micro_batch(train_step, model, batch, batch_idx, accum)
            self._samples += _batch_size(batch)
            micro += 1
            if micro < accum and not last:
                continue
            micro = 0
            if self._finish_step(last, wants_step_end):
                return
        if micro and self._finish_step(True, wants_step_end):  # a length-less loader ran dry
            return
        self.batch_in_epoch = 0

    def _train_micro_batch(self, train_step: Any, model: torch.nn.Module, batch: Any,
                           batch_idx: int, accum: int) -> None:
        """Forward (under autocast) and backward of one micro-batch; keeps the loss on device."""
        if self._autocast_dtype is None:
            out = train_step(self, model, batch, batch_idx)
        else:
            with self.autocast():
                out = train_step(self, model, batch, batch_idx)
        if isinstance(out, tuple):
            out, extras = out
            for key, value in extras.items():
                self._extras.setdefault(key, []).append(value)
        elif out is None:
            raise PluginError("no train_step hook returned a loss")
        self._losses.append(out)  # this step's only; read (and detached) at logging steps
        if accum > 1:
            out = out / accum
        if self.scaler is not None:
            out = self.scaler.scale(out)
        out.backward()

    def request_stop(self, reason: str) -> None:
        """Stop after the current step (all ranks together), saving a checkpoint first."""
        self.stop_reason = reason
        self._stop_requested = True
        if self._stop_agreement is None:
            self.should_stop = True

    def _finish_step(self, end_of_epoch: bool, wants_step_end: bool) -> bool:
        """Optimizer step, then logging, evaluation and ``on_step_end``; True to stop."""
        assert self.optimizer is not None
        self._optimizer_step(self.optimizer)
        self.step += 1
        self._interval_steps += 1
        if self._stop_agreement is not None and self._stop_agreement.step(self._stop_requested):
            self.should_stop = True
            self.stop_reason = self.stop_reason or "a signal on another rank"
        if end_of_epoch:
            self.batch_in_epoch = 0
            self._epoch_finished = True
        end_of_run = self.total_steps is not None and self.step >= self.total_steps
        if self.step % self.config.log_every == 0 or end_of_run:
            self._log_train()
        if self._has_eval and self._eval_due(end_of_epoch, end_of_run):
            self.evaluate()
        if wants_step_end:
            self._step_end(self, self.step)
        self._losses.clear()
        if self._extras:
            self._extras.clear()
        self._epoch_finished = False
        return end_of_run or self.should_stop

    def _optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        assert self.module is not None
        config = self.config
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if config.grad_clip > 0:
            self._grad_norm = parallel.local_tensor(
                torch.nn.utils.clip_grad_norm_(self._params, config.grad_clip))
        elif config.log_grad_norm and (self.step + 1) % config.log_every == 0:
            # Without clipping the norm is an extra reduction on each logging step, which a
            # tiny model notices (~2% here), so it is opt-in there.
            self._grad_norm = parallel.grad_norm(self._params)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    def _eval_due(self, end_of_epoch: bool, end_of_run: bool) -> bool:
        every = self.config.eval_every
        if every is not None:
            return self.step % every == 0 or end_of_run
        return end_of_epoch or end_of_run

    # --- checkpoint state ----------------------------------------------------

    def _rng(self) -> dict[str, Any]:
        state = checkpoint.rng_state()
        if self.data is not None:
            state["loader"] = [g.get_state() for g in resume.generators(self.data.train)]
        return state

    def _set_rng(self, state: dict[str, Any]) -> None:
        checkpoint.set_rng_state(state)
        if self.data is not None:
            for generator, saved in zip(resume.generators(self.data.train),
                                        state.get("loader", []), strict=False):
                generator.set_state(saved)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly from this step boundary."""
        assert self.module is not None and self.optimizer is not None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        finished = self._epoch_finished
        # Full (unsharded), parameter-name keyed states: one format for 1 process, DDP and
        # FSDP, so a checkpoint resumes at any world size.
        model_state, optimizer_state = get_state_dict(
            self.module, self.optimizer,
            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        state: dict[str, Any] = {
            "format": checkpoint.FORMAT,
            "model_name": self.model_name or type(self.module).__name__,
            "model": model_state,
            "optimizer": optimizer_state,
            "progress": {
                "step": self.step,
                "epoch": self.epoch + 1 if finished else self.epoch,
                "batch": 0 if finished else self.batch_in_epoch,
            },
            "rng": parallel.gather(self._rng()),
            "pending": {"samples": self._samples},
            "metrics": {"train": dict(self.train_metrics), "eval": dict(self.eval_metrics)},
            "config": {"train": to_dict(self.config),
                       "model": to_dict(self.model_config) if self.model_config else None},
            "versions": _versions(),
            "plugins": {},
        }
        if not finished and self.batch_in_epoch and self._epoch_rng is not None:
            state["epoch_rng"] = parallel.gather(self._epoch_rng)
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        self.hooks.on_save_checkpoint(trainer=self, checkpoint=state["plugins"])
        return state

    def load_state_dict(self, state: Mapping[str, Any], source: Path | None = None) -> None:
        """Continue from ``state``; refuses another model's state before touching anything."""
        assert self.module is not None and self.optimizer is not None
        where = source or Path("<state>")
        if state.get("format") != checkpoint.FORMAT or "model" not in state:
            raise checkpoint.CheckpointError(f"{where} is not an ezpz training checkpoint")
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        checkpoint.check_fits(self.module.state_dict(), state["model"], where)
        try:
            set_state_dict(self.module, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optimizer"],
                           options=StateDictOptions(full_state_dict=True))
        except (ValueError, KeyError, RuntimeError) as error:
            raise checkpoint.CheckpointError(
                f"checkpoint {where} does not fit this optimizer: {error}"
            ) from None
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        progress = state["progress"]
        self.step, self.epoch, self.batch_in_epoch = (
            progress["step"], progress["epoch"], progress["batch"])
        self._samples = state["pending"]["samples"]
        self.train_metrics = dict(state["metrics"]["train"])
        self.eval_metrics = dict(state["metrics"]["eval"])
        def mine(states: list[dict[str, Any]]) -> dict[str, Any]:
            return states[self.rank] if self.rank < len(states) else states[0]

        if self.batch_in_epoch:
            self._resume_epoch_rng = mine(state["epoch_rng"])
            self._resume_step_rng = mine(state["rng"])
        else:
            self._resume_epoch_rng, self._resume_step_rng = mine(state["rng"]), None
        self.hooks.on_load_checkpoint(trainer=self, checkpoint=state.get("plugins", {}))

    # --- metrics -------------------------------------------------------------

    @torch.no_grad()
    def _log_train(self) -> None:
        """Bring this step's loss and metrics to the host: the only sync in training.

        Only the logging step is read (as nanoGPT and Lightning log): touching
        every step's loss, even with a cheap on-device sum, costs an operator
        launch per step that tiny models notice.
        """
        if not self._losses:
            return
        now = time.perf_counter()
        elapsed = max(now - self._interval_start, 1e-9)
        names = ["train/loss", *(f"train/{key}" for key in self._extras)]
        values = [_mean(self._losses), *(_mean(items) for items in self._extras.values())]
        if self._grad_norm is not None:
            values.append(self._grad_norm.detach().float())
            names.append("train/grad_norm")
        stacked = torch.stack(values)  # one tensor, so one device-to-host copy
        if self.world_size > 1:
            stacked = dist.all_reduce_mean(stacked)
        metrics = dict(zip(names, stacked.tolist(), strict=True))
        assert self.optimizer is not None
        samples_per_sec = self._samples * self.world_size / elapsed
        metrics["train/lr"] = float(self.optimizer.param_groups[0]["lr"])
        metrics["train/samples_per_sec"] = samples_per_sec
        metrics["train/step_ms"] = 1000.0 * elapsed / max(self._interval_steps, 1)
        metrics["train/epoch"] = float(self.epoch)
        self._add_throughput(metrics, samples_per_sec)
        self._samples, self._grad_norm = 0, None
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

    def log_text(self, tag: str, text: str) -> None:
        """Send a text record (e.g. a generated sample) to every plugin's ``on_log_text``."""
        self.hooks.on_log_text(trainer=self, step=self.step, tag=tag, text=text)

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
        self.last_eval_step = self.step
        self._interval_start += time.perf_counter() - started  # throughput counts training only
        self.hooks.on_eval_end(trainer=self, step=self.step, metrics=metrics)
        self.log(metrics)
        return metrics
