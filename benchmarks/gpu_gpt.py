"""GPT-2 small tokens/s and MFU on one GPU, through ezpz vs a hand-written loop.

Both train GPT-2 small (124M: 12 layers, 12 heads, 768 wide, block 1024, the
vocabulary padded to 50304, biases, no dropout) as a GPU run would: bf16
autocast, SDPA's flash-attention kernel (the only one allowed, so a GPU or
shape it cannot serve is an error rather than a silent fallback),
``torch.compile``, TF32 matmuls allowed, fused AdamW (lr 6e-4, betas 0.9/0.95,
weight decay 0.1 on matrices, constant rate), gradient clipping at 1.0, and the
loss read every ``--log-every`` steps. ezpz runs with its default plugins and
an out_dir, as `ezpz train` would, and the GPT plugin's train_step (the model
returns ``(logits, loss)``). Batches are random tokens made on the GPU before
anything is timed, the same for both.

Each trial builds both afresh, interleaved, and runs ``--warmup`` untimed steps
(compilation happens there; only the first build compiles, as Dynamo reuses the
graph for later GPTs of the same shape) before ``--steps`` timed ones. The clock is read,
after a CUDA synchronize, when the batch iterator hands out the first timed
batch and when it is asked for the one after the last: the marginal cost of a
step, without setup, compilation or ezpz's end-of-run work (final checkpoint,
summary). Reported: ms/step, tokens/s, MFU (``GPT.flops_per_token`` over the
dense bf16 peak in ``ezpz_core.flops``) and ezpz/hand. Target: ezpz within 3%
of the loop, and MFU >= 40% on an H100/H200-class GPU.

``--small`` is a smoke run: a 2-layer GPT 64 wide, a few steps; without CUDA it
runs on the CPU in fp32, uncompiled (its figures mean nothing). ezpz must be
installed (``pip install -e .``): its default plugins come from its entry points.

    python -m benchmarks.gpu_gpt [--batch 16] [--steps 50] [--warmup 10] [--trials 3] [--small]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import ezpz
from benchmarks.common import interleaved, report
from ezpz_core import flops
from ezpz_core.plugins import Plugins
from ezpz_models.gpt.config import ModelConfig
from ezpz_models.gpt.model import GPT

LR, BETA1, BETA2, WEIGHT_DECAY, CLIP = 6e-4, 0.9, 0.95, 0.1, 1.0
#: Distinct batches made up front; the steps cycle through them.
DISTINCT_BATCHES = 8
HAND, EZPZ = "hand-written loop", "ezpz (default plugins)"
DEFAULT_PLUGINS = ("console", "history", "tensorboard", "checkpoint")

Batch = tuple[torch.Tensor, torch.Tensor]
Forward = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def gpt2_small() -> ModelConfig:
    return ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, bias=True,
                       vocab_size=50304, dropout=0.0)


def tiny() -> ModelConfig:
    return ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, bias=True,
                       vocab_size=256, dropout=0.0)


@dataclass
class Setup:
    """What both contenders share: the model shape, the batches and how to run them."""

    model: ModelConfig
    device: torch.device
    batches: list[Batch]
    warmup: int
    steps: int
    log_every: int
    #: bf16 autocast, flash attention only and torch.compile: the GPU run. Off on a CPU.
    gpu: bool
    final_loss: dict[str, list[float]] = field(default_factory=dict)

    @property
    def tokens_per_step(self) -> int:
        x, _ = self.batches[0]
        return x.numel()


def make_batches(config: ModelConfig, batch: int, device: torch.device) -> list[Batch]:
    """Random tokens on ``device``; the targets are the inputs shifted by one, as in text."""
    generator = torch.Generator(device=device).manual_seed(1)
    batches: list[Batch] = []
    for _ in range(DISTINCT_BATCHES):
        tokens = torch.randint(0, config.vocab_size, (batch, config.block_size + 1),
                               generator=generator, device=device)
        batches.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()))
    return batches


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedBatches:
    """The batches for one run, read from the clock at the first timed batch and past the last.

    By the time batch ``i`` is asked for, the loop has queued the steps before it, so
    after a device synchronize the two readings enclose exactly the timed steps. One
    batch past them is handed out (and trained on, untimed) so the last mark is taken.
    """

    def __init__(self, setup: Setup) -> None:
        self.batches = setup.batches
        self.device = setup.device
        self.first = setup.warmup
        self.last = setup.warmup + setup.steps
        self.marks: list[float] = []

    def __len__(self) -> int:
        return self.last + 1

    def __iter__(self) -> Iterator[Batch]:
        self.marks.clear()
        for index in range(len(self)):
            if index in (self.first, self.last):
                synchronize(self.device)
                self.marks.append(time.perf_counter())
            yield self.batches[index % len(self.batches)]

    def ms_per_step(self) -> float:
        start, stop = self.marks
        return 1000.0 * (stop - start) / (self.last - self.first)


def build(setup: Setup) -> GPT:
    """The same initial weights for every contender and trial."""
    torch.manual_seed(0)
    return GPT(setup.model)


def loss_of(model: Forward, batch: Batch) -> torch.Tensor:
    _, loss = model(*batch)
    assert loss is not None  # targets were given
    return loss


def attention(setup: Setup) -> contextlib.AbstractContextManager[Any]:
    """Flash attention only on the GPU run; the CPU smoke run takes what SDPA picks."""
    if setup.gpu:
        return sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    return contextlib.nullcontext()


def hand_written(setup: Setup) -> float:
    """Milliseconds per timed step of a plain loop."""
    model = build(setup).to(setup.device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    fused = {"fused": True} if setup.device.type == "cuda" else {}
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": other, "weight_decay": 0.0}],
                                  lr=LR, betas=(BETA1, BETA2), **fused)
    forward: Forward = torch.compile(model) if setup.gpu else model
    data = TimedBatches(setup)
    loss = torch.zeros(())
    with attention(setup):
        for step, batch in enumerate(data):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=setup.gpu):
                loss = loss_of(forward, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            optimizer.step()
            if (step + 1) % setup.log_every == 0:
                loss.item()
    setup.final_loss.setdefault(HAND, []).append(loss.item())
    return data.ms_per_step()


class GPTStep:
    """The GPT plugin's own train_step, for a GPT passed in as a module."""

    @ezpz.hookimpl
    def train_step(self, model: Forward, batch: Batch) -> torch.Tensor:
        return loss_of(model, batch)


def through_ezpz(setup: Setup, out: Path) -> float:
    """Milliseconds per timed step of ``Trainer.fit`` (default plugins, an out_dir)."""
    data = TimedBatches(setup)
    config = ezpz.TrainConfig(max_steps=len(data), batch_size=setup.batches[0][0].size(0),
                              lr=LR, beta1=BETA1, beta2=BETA2, weight_decay=WEIGHT_DECAY,
                              grad_clip=CLIP, log_every=setup.log_every,
                              precision="bf16" if setup.gpu else "fp32", compile=setup.gpu,
                              device=setup.device.type,
                              out_dir=str(out / f"run-{time.perf_counter_ns()}"))
    trainer = ezpz.Trainer(build(setup), config, plugins=[GPTStep()])
    with attention(setup):
        result = trainer.fit(data)
    setup.final_loss.setdefault(EZPZ, []).append(result.train["train/loss"])
    return data.ms_per_step()


def collected(run: Callable[[], float]) -> Callable[[], float]:
    """``run``, then free its model, optimizer and Trainer before the next contender."""

    def trial() -> float:
        figure = run()
        gc.collect()
        return figure

    return trial


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="sequences per step")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per trial")
    parser.add_argument("--warmup", type=int, default=10,
                        help="untimed steps first: compilation and the first log happen here")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--log-every", type=int, default=10, help="steps between loss reads")
    parser.add_argument("--small", action="store_true",
                        help="a tiny GPT, batch 4, 5+10 steps, 2 trials; CPU without CUDA")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.small:
        parser.exit(2, "gpu_gpt: needs a CUDA GPU (--small runs a smoke test on the CPU)\n")
    missing = [name for name in DEFAULT_PLUGINS if name not in Plugins().infos]
    if missing:  # found through the package's entry points, so only once it is installed
        parser.exit(2, f"gpu_gpt: ezpz's default plugins {', '.join(missing)} are not loaded; "
                       "install the repository first (pip install -e .)\n")
    if args.small:
        args.batch, args.steps, args.warmup, args.trials, args.log_every = 4, 10, 5, 2, 5
    if args.warmup < args.log_every:
        parser.error("--warmup must be >= --log-every: ezpz's first log opens its log files, "
                     "a one-off cost that belongs in the warm-up")
    model = tiny() if args.small else gpt2_small()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.set_float32_matmul_precision("high")  # TF32 for whatever autocast leaves in fp32
    else:
        torch.set_num_threads(1)  # a smoke run: spare a shared machine's other cores
    setup = Setup(model=model, device=device, batches=make_batches(model, args.batch, device),
                  warmup=args.warmup, steps=args.steps, log_every=args.log_every, gpu=cuda)
    name = device_name(device)
    with torch.device("meta"):  # counts only: no need to initialise 124M weights
        flops_per_token = GPT(model).flops_per_token()
    peak = flops.peak_flops(name)
    shape = (f"{model.n_layer} layers, {model.n_head} heads, {model.n_embd} wide, "
             f"block {model.block_size}, vocab {model.vocab_size}")
    mode = "bf16 autocast, flash SDPA, torch.compile" if cuda else "fp32, eager"
    print(f"device: {name}; {mode}; GPT {shape}; batch {args.batch} "
          f"({setup.tokens_per_step} tokens/step); {flops_per_token / 1e6:.1f} MFLOP/token; "
          f"bf16 peak {f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown'}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        contenders = {HAND: collected(lambda: hand_written(setup)),
                      EZPZ: collected(lambda: through_ezpz(setup, Path(tmp)))}
        results = interleaved(contenders, trials=args.trials)
    title = (f"GPT {'tiny (--small)' if args.small else '2 small (124M)'}, "
             f"{args.steps} timed steps after {args.warmup} warm-up, per trial")
    report(f"{title}: marginal cost of a step", "ms/step", results, baseline=HAND)
    utilisations: dict[str, float | None] = {}
    for contender, values in results.items():
        tokens_per_sec = setup.tokens_per_step / (statistics.median(values) / 1000.0)
        utilisations[contender] = flops.mfu(flops_per_token, tokens_per_sec, name)
        found = utilisations[contender]
        shown = f"MFU {found:.1%}" if found is not None else f"MFU: unknown peak for {name}"
        print(f"  {contender:<28} {tokens_per_sec:14,.0f} tokens/s  {shown}")
    ratio = statistics.median(results[EZPZ]) / statistics.median(results[HAND])
    ezpz_mfu = utilisations[EZPZ]
    print(f"  targets: ezpz/hand {ratio:.3f} <= 1.03: {verdict(ratio <= 1.03)}; ezpz MFU >= 40%: "
          f"{'no peak known' if ezpz_mfu is None else verdict(ezpz_mfu >= 0.40)}")
    losses = ", ".join(f"{k} {statistics.median(v):.4f}" for k, v in setup.final_loss.items())
    print(f"  last-step loss (same weights and batches, so these should agree): {losses}")


if __name__ == "__main__":
    main()
