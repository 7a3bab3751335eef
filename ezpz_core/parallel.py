"""Data parallelism on torch.distributed: DDP or FSDP2, and what ranks must agree on.

Everything here is a no-op with one process, so the single-CPU run pays nothing.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from ezpz_core.errors import ConfigError


def wrap(module: nn.Module, strategy: str, device: torch.device, precision: torch.dtype | None
         ) -> nn.Module:
    """The module the loop runs forward through: DDP, FSDP2-sharded, or ``module`` itself."""
    import torch.distributed as tdist

    if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
        return module
    if strategy == "fsdp":
        shard(module, device, precision)
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type in ("cuda", "xpu") and device.index is not None else None
    return DistributedDataParallel(module, device_ids=ids)


def shard(module: nn.Module, device: torch.device, precision: torch.dtype | None) -> None:
    """FSDP2: shard each block of every ``nn.ModuleList`` (the transformer blocks), then the root.

    Sharding per block lets each block's parameters be gathered just before it
    runs and freed after, instead of the whole model at once.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {}
    if precision is not None and device.type != "cpu":
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=precision,
                                                   reduce_dtype=torch.float32)
    blocks = [block for child in module.modules() if isinstance(child, nn.ModuleList)
              for block in child]
    if not blocks:
        raise ConfigError(
            f"--strategy fsdp found no nn.ModuleList of blocks to shard in "
            f"{type(module).__name__}; use --strategy ddp"
        )
    for block in blocks:
        fully_shard(block, **kwargs)
    fully_shard(module, **kwargs)


def no_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
    """Skip the gradient all-reduce on micro-batches that do not end an optimizer step."""
    if sync:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):
        return model.no_sync()  # type: ignore[no-any-return,operator]
    setter = getattr(model, "set_requires_gradient_sync", None)
    if setter is not None:  # FSDP2
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model: Any) -> Any:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def grad_norm(params: list[torch.nn.Parameter]) -> torch.Tensor | None:
    """The total L2 norm of the gradients, as a plain tensor on their device.

    Plain gradients take one fused ``_foreach_norm``; ``get_total_norm`` (which
    groups by device and dtype, and understands FSDP2's DTensors) costs several
    times more Python, which a tiny model's logging step notices.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    if all(type(g) is torch.Tensor for g in grads) and len({g.device for g in grads}) == 1:
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    return local_tensor(torch.nn.utils.get_total_norm(grads))


def local_tensor(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a DTensor (FSDP2 gradient norms), unchanged otherwise."""
    full = getattr(value, "full_tensor", None)
    return full() if callable(full) else value


class StopAgreement:
    """Ranks stop at the same step: each step's stop requests are OR-ed across ranks.

    The all-reduce runs on a gloo group in the background and is read one step
    later, so a stop costs one extra step and no device sync.
    """

    def __init__(self) -> None:
        import torch.distributed as tdist

        self._group: Any = tdist.new_group(backend="gloo")
        self._flag = torch.zeros(1)
        self._work: Any = None

    def step(self, requested: bool) -> bool:
        """Post this rank's request; True once any rank asked one step ago."""
        import torch.distributed as tdist

        agreed = False
        if self._work is not None:
            self._work.wait()
            agreed = bool(self._flag.item())
        self._flag.fill_(1.0 if requested else 0.0)
        self._work = tdist.all_reduce(self._flag, op=tdist.ReduceOp.MAX, group=self._group,
                                      async_op=True)
        return agreed

    def finish(self) -> None:
        if self._work is not None:
            self._work.wait()
            self._work = None


def gather(value: Any) -> list[Any]:
    """Every rank's ``value`` (e.g. its RNG state), in rank order; ``[value]`` alone."""
    import torch.distributed as tdist

    if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
        return [value]
    out: list[Any] = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, value)
    return out
