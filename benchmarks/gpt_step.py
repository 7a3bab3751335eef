"""GPT step time through ezpz vs a minimal hand-written loop, same model and data.

nanoGPT's CPU configuration (4 layers, 4 heads, 128 wide, block 64, batch 12,
AdamW lr 1e-3 with warmup and cosine decay, clip 1.0) on tiny Shakespeare when
it is available (``--data``), else this Python's standard library. ezpz runs
with its default plugins on and an out_dir, as `ezpz train` would. Reported
per step two ways: a whole fit divided by its steps, and the marginal cost of
a step (a fit of N steps minus one of N/5), which leaves out the fixed start
and end-of-run work that a 2,000-step run spreads thin.

    python benchmarks/gpt_step.py [--data FILE] [--steps 100] [--trials 5]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import ezpz
from benchmarks.common import per_step, report
from ezpz_models.gpt.config import ModelConfig
from ezpz_models.gpt.data import TextBatches, prepare, resolve_corpus
from ezpz_models.gpt.model import GPT

LR, MIN_LR, WARMUP, DECAY = 1e-3, 1e-4, 100, 2000


def lr_at(step: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = min(1.0, (step - WARMUP) / (DECAY - WARMUP))
    return MIN_LR + (LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi * progress))


def build(vocab: int) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, bias=True,
                           vocab_size=vocab, dropout=0.0))


def hand_written(data: TextBatches, vocab: int, steps: int) -> float:
    model = build(vocab)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": other, "weight_decay": 0.0}],
                                  lr=LR, betas=(0.9, 0.99))
    batches = iter(data)
    start = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        x, y = next(batches)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0:
            loss.item()
    return time.perf_counter() - start


def through_ezpz(data: TextBatches, vocab: int, steps: int, out: Path) -> float:
    model = build(vocab)
    config = ezpz.TrainConfig(max_steps=steps, lr=LR, min_lr=MIN_LR, schedule="cosine",
                              warmup_steps=WARMUP, decay_steps=DECAY, beta2=0.99,
                              weight_decay=0.1, grad_clip=1.0, log_every=50,
                              out_dir=str(out / f"run-{time.perf_counter_ns()}"))
    trainer = ezpz.Trainer(model, config, plugins=[GPTStep()])
    trainer.setup(data)
    start = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - start


class GPTStep:
    """The GPT plugin's own train_step, for a GPT passed in as a module."""

    @ezpz.hookimpl
    def train_step(self, model: GPT, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        _, loss = model(*batch)
        return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=None)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    prepared = prepare(resolve_corpus(args.data))
    vocab = prepared.tokenizer.vocab_size
    data = TextBatches(prepared.train, batch_size=12, block_size=64, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        runners: dict[str, Callable[[int], float]] = {
            "hand-written loop": lambda n: hand_written(data, vocab, n),
            "ezpz (default plugins)": lambda n: through_ezpz(data, vocab, n, Path(tmp)),
        }
        whole, results = per_step(runners, args.steps, args.trials, scale=1000)
    title = f"GPT nanoGPT-CPU config, {args.steps} steps per trial"
    report(f"{title}: whole fit / steps", "ms/step", whole, baseline="hand-written loop")
    report(f"{title}: marginal cost of a step", "ms/step", results,
           baseline="hand-written loop")


if __name__ == "__main__":
    main()
