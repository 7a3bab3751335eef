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


def load_run(run_dir: Path, device: str | None = None) -> tuple[GPT, CharTokenizer | BpeTokenizer]:
    """The model and tokenizer a ``ezpz train gpt`` run left in ``run_dir``."""
    import json

    missing = [name for name in (WEIGHTS, CONFIG, TOKENIZER) if not (run_dir / name).is_file()]
    if missing:
        raise DataError(
            f"{run_dir} is not a finished GPT run (missing {', '.join(missing)}); "
            "pass the --out-dir of an `ezpz train gpt` run"
        )
    config = build(ModelConfig, json.loads((run_dir / CONFIG).read_text()), "model")
    model = GPT(config)
    state = torch.load(run_dir / WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
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
