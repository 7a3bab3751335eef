"""Rebuilding a trained GPT from its run directory and sampling text from it."""

from __future__ import annotations

from pathlib import Path

import torch

from ezpz_core.config import build
from ezpz_core.dist import get_torch_device
from ezpz_core.errors import DataError
from ezpz_models.gpt.config import ModelConfig
from ezpz_models.gpt.data import BpeTokenizer, CharTokenizer, load_tokenizer
from ezpz_models.gpt.model import GPT
from ezpz_models.gpt.plugin import CONFIG, TOKENIZER, WEIGHTS


def _weights(source: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The run directory and model weights ``source`` names: a run (its final weights, else
    its newest complete checkpoint) or one checkpoint directory inside a run."""
    from ezpz_core import checkpoint

    if (source / checkpoint.STATE).is_file():  # RUN/checkpoints/step-N
        return source.parent.parent, checkpoint.load(source)["model"]
    if (source / WEIGHTS).is_file():
        return source, torch.load(source / WEIGHTS, map_location="cpu", weights_only=True)
    latest = checkpoint.resolve(checkpoint.LATEST, source) if source.is_dir() else None
    if latest is None:
        raise DataError(
            f"{source} is not a GPT run or checkpoint (no {WEIGHTS} and no complete checkpoint); "
            "pass the --out-dir of an `ezpz train gpt` run"
        )
    return source, checkpoint.load(latest)["model"]


def load_run(source: Path, device: str | None = None) -> tuple[GPT, CharTokenizer | BpeTokenizer]:
    """The model and tokenizer of an ``ezpz train gpt`` run, or of one of its checkpoints."""
    import json

    run_dir, weights = _weights(source)
    missing = [name for name in (CONFIG, TOKENIZER) if not (run_dir / name).is_file()]
    if missing:
        raise DataError(
            f"{run_dir} is not a GPT run (missing {', '.join(missing)}); "
            "pass the --out-dir of an `ezpz train gpt` run"
        )
    config = build(ModelConfig, json.loads((run_dir / CONFIG).read_text()), "model")
    model = GPT(config)
    model.load_state_dict(weights)
    model.to(device or get_torch_device())
    return model, load_tokenizer(run_dir / TOKENIZER)


def generate_text(run_dir: Path, prompt: str, *, max_new_tokens: int, temperature: float,
                  top_k: int | None, seed: int, device: str | None = None) -> str:
    """The prompt followed by ``max_new_tokens`` sampled tokens; the same seed, the same text."""
    model, tokenizer = load_run(run_dir, device)
    ids = tokenizer.encode(prompt)
    if not ids:
        raise DataError("the prompt is empty; pass --prompt TEXT")
    device_of = next(model.parameters()).device
    generator = torch.Generator(device=device_of).manual_seed(seed)
    idx = torch.tensor([ids], dtype=torch.long, device=device_of)
    try:
        out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k,
                             generator=generator)
    except ValueError as error:
        raise DataError(str(error)) from None
    return tokenizer.decode(out[0].tolist())
