"""The GPT plugin: a character- or BPE-level language model on any text.

Registered through the ``ezpz`` entry point like any third-party plugin, and
free of torch imports at module level so ``ezpz models`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import attrs

from ezpz_core.hookspecs import hookimpl
from ezpz_core.types import Data, ModelSpec, Register
from ezpz_models.gpt.config import ModelConfig

if TYPE_CHECKING:
    import torch

    from ezpz_core.trainer import Trainer
    from ezpz_models.gpt.model import GPT

#: Files a run directory holds so ``ezpz generate`` can rebuild the model.
WEIGHTS, CONFIG, TOKENIZER = "model.pt", "model_config.json", "tokenizer.json"
#: The sample logged at each evaluation: its length and how it is drawn.
SAMPLE_TOKENS, SAMPLE_TEMPERATURE, SAMPLE_TOP_K = 200, 0.8, 200


def _field(default: Any, help: str, validator: Any = None) -> Any:
    return attrs.field(default=default, validator=validator, metadata={"help": help})


def _fraction(instance: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{attribute.name}={value!r} must be in (0, 1)")


@attrs.define(frozen=True)
class GPTOptions:
    """Architecture and data options for ``ezpz train gpt`` (nanoGPT's CPU config)."""

    data: str | None = _field(None, "a text file or a directory of text files; default: this "
                                    "Python's standard-library sources, read in place")
    tokenizer: str = _field("char", "char, or bpe (GPT-2's, needs `pip install 'ezpz[bpe]'`)",
                            attrs.validators.in_(("char", "bpe")))
    val_fraction: float = _field(0.1, "share of the tokens held out for validation", _fraction)
    n_layer: int = _field(4, "transformer blocks")
    n_head: int = _field(4, "attention heads per block")
    n_embd: int = _field(128, "embedding width (a multiple of n_head)")
    block_size: int = _field(64, "context length in tokens")
    bias: bool = _field(True, "biases in Linear and LayerNorm layers (as GPT-2)")
    dropout: float = _field(0.0, "dropout probability")
    vocab_size: int | None = _field(None, "vocabulary size (default: the tokenizer's)")

    def __attrs_post_init__(self) -> None:
        self.model_config(self.vocab_size or 1)  # validates the architecture fields

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
                           block_size=self.block_size, bias=self.bias, vocab_size=vocab_size,
                           dropout=self.dropout)


@hookimpl
def register_models(register: Register) -> None:
    register(ModelSpec(
        name="gpt",
        description="GPT: a decoder-only transformer language model on text "
                    "(default data: Python's standard library)",
        config=GPTOptions,
        train_defaults={"max_steps": 2000, "batch_size": 12, "lr": 1e-3, "min_lr": 1e-4,
                        "schedule": "cosine", "warmup_steps": 100, "beta2": 0.99,
                        "weight_decay": 0.1, "grad_clip": 1.0, "eval_every": 250,
                        "eval_batches": 200, "log_every": 50},
    ))


@hookimpl
def register_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser("generate", help="sample text from a trained GPT run",
                                   description="Sample text from a trained GPT run.")
    parser.add_argument("--from", dest="source", required=True, metavar="RUN_OR_CHECKPOINT",
                        help="a run directory written by `ezpz train gpt`, or one of its "
                             "checkpoints (RUN/checkpoints/step-N)")
    parser.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    parser.add_argument("--max-new-tokens", type=int, default=200, metavar="N")
    parser.add_argument("--temperature", type=float, default=0.8, metavar="T")
    parser.add_argument("--top-k", type=int, default=None, metavar="K")
    parser.add_argument("--seed", type=int, default=0, metavar="S")
    parser.add_argument("--device", default=None, help="cuda, xpu, mps or cpu")
    parser.set_defaults(handler=_generate_command)


def _generate_command(args: argparse.Namespace) -> int:
    from ezpz_models.gpt.sample import generate_text

    print(generate_text(Path(args.source), args.prompt, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                        device=args.device))
    return 0


@hookimpl
def build_data(trainer: Trainer) -> Data:
    from ezpz_models.gpt.data import (
        TextBatches,
        check_length,
        eval_batches,
        prepare,
        resolve_corpus,
    )

    options: GPTOptions = trainer.model_config
    config = trainer.config
    prepared = prepare(resolve_corpus(options.data), options.tokenizer, options.val_fraction)
    check_length(prepared, options.block_size)
    train = TextBatches(prepared.train, config.batch_size, options.block_size,
                        seed=config.seed, rank=trainer.rank, world_size=trainer.world_size)
    evaluation = eval_batches(prepared.val, config.eval_batches or 200,
                              config.eval_batch_size or config.batch_size, options.block_size,
                              seed=config.seed)
    meta = {"tokenizer": prepared.tokenizer, "vocab_size": prepared.tokenizer.vocab_size,
            "tokens_per_sample": options.block_size}
    return Data(train, evaluation, meta)


@hookimpl
def build_model(trainer: Trainer) -> torch.nn.Module:
    from ezpz_models.gpt.model import GPT

    assert trainer.data is not None
    options: GPTOptions = trainer.model_config
    vocab = options.vocab_size or trainer.data.meta["vocab_size"]
    return GPT(options.model_config(vocab))


@hookimpl
def train_step(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    inputs, targets = batch
    _, loss = model(inputs, targets)
    return loss


@hookimpl
def eval_step(model: torch.nn.Module,
              batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    inputs, targets = batch
    _, loss = model(inputs, targets)
    return {"loss": loss}


@hookimpl
def on_train_start(trainer: Trainer) -> None:
    """Keep the tokenizer and architecture beside the run, for ``ezpz generate``."""
    if trainer.out_dir is None or trainer.rank != 0 or trainer.module is None:
        return
    assert trainer.data is not None
    trainer.data.meta["tokenizer"].save(trainer.out_dir / TOKENIZER)
    config = attrs.asdict(trainer.module.config)  # type: ignore[arg-type]
    (trainer.out_dir / CONFIG).write_text(json.dumps(config, indent=2) + "\n")


@hookimpl
def on_eval_end(trainer: Trainer) -> None:
    """Log a short generated sample at each evaluation, to read how the text improves.

    Logged by rank 0 only. Sampling draws from its own generator seeded with the
    run's seed, so the global RNG (and with it the rest of training) is untouched
    and successive samples differ only because the model does. A sharded model
    (FSDP2 keeps parameters as DTensors) gathers them in every forward pass, so
    then every rank samples, in step, and rank 0 alone logs the text.
    """
    if trainer.module is None or trainer.data is None:
        return
    model = cast("GPT", trainer.module)
    sharded = any(type(p).__name__ == "DTensor" for p in model.parameters())
    tokenizer = trainer.data.meta.get("tokenizer")
    if (trainer.rank != 0 and not sharded) or tokenizer is None:  # None: not build_data's data
        return
    import torch

    from ezpz_core.errors import DataError

    try:
        prompt = tokenizer.encode("\n") or [0]
    except DataError:  # a corpus without newlines: start from the first token
        prompt = [0]
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(trainer.config.seed)
    idx = torch.tensor([prompt], dtype=torch.long, device=device)
    out = model.generate(idx, SAMPLE_TOKENS, temperature=SAMPLE_TEMPERATURE, top_k=SAMPLE_TOP_K,
                         generator=generator)
    if trainer.rank == 0:
        trainer.log_text("sample", tokenizer.decode(out[0, len(prompt):].tolist()))


@hookimpl
def on_train_end(trainer: Trainer) -> None:
    if trainer.out_dir is None or trainer.rank != 0 or trainer.module is None:
        return
    import os

    import torch

    target = trainer.out_dir / WEIGHTS
    partial = target.with_name(f".{WEIGHTS}.tmp")
    torch.save(trainer.module.state_dict(), partial)
    os.replace(partial, target)
