"""The GPT model, its config, and the FLOP/MFU helpers."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import attrs
import pytest
import torch
from torch.nn import functional as F

from ezpz_core.flops import PEAK_BF16_FLOPS, mfu, peak_flops
from ezpz_models.gpt.config import ModelConfig
from ezpz_models.gpt.model import GPT, Block

TINY = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65)
GPT2_SMALL = ModelConfig(
    n_layer=12, n_head=12, n_embd=768, block_size=1024, bias=True, vocab_size=50257
)


def tiny_model(**overrides: Any) -> GPT:
    torch.manual_seed(0)
    return GPT(attrs.evolve(TINY, **overrides))


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


# ----------------------------------------------------------------------------- config


def test_config_defaults_and_seed_guide_arguments() -> None:
    assert ModelConfig() == ModelConfig(
        n_layer=12, n_head=12, n_embd=768, block_size=1024, bias=True, vocab_size=50304
    )
    assert GPT2_SMALL.vocab_size == 50257
    assert GPT2_SMALL.head_dim == 64


def test_config_fields_have_help_for_the_cli() -> None:
    for field in attrs.fields(ModelConfig):
        assert field.metadata.get("help"), field.name


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"n_layer": 0}, "n_layer=0 must be a positive integer"),
        ({"n_head": -1}, "n_head=-1 must be a positive integer"),
        ({"n_embd": 64.0}, "n_embd=64.0 must be a positive integer"),
        ({"block_size": True}, "block_size=True must be a positive integer"),
        ({"vocab_size": 0}, "vocab_size=0 must be a positive integer"),
        ({"dropout": 1.0}, "dropout=1.0 must be a number in [0, 1)"),
        ({"dropout": -0.1}, "dropout=-0.1 must be a number in [0, 1)"),
        ({"bias": "false"}, "bias='false' must be true or false"),
        ({"n_embd": 100, "n_head": 12}, "n_embd=100 must be divisible by n_head=12"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], expected: str) -> None:
    with pytest.raises(ValueError) as err:
        ModelConfig(**kwargs)  # type: ignore[arg-type]
    assert one_line(err) == expected


def test_config_module_does_not_import_torch() -> None:
    code = (
        "import sys, ezpz_models.gpt.config, ezpz_core.flops; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ----------------------------------------------------------------------------- forward


def test_seed_guide_snippet() -> None:
    model = GPT(GPT2_SMALL)
    x = torch.randint(0, 50257, (1, 100))
    logits, loss = model(x, x)
    assert logits.shape == torch.Size([1, 100, 50257])
    assert loss is not None and torch.isfinite(loss)


def test_logits_shape_and_no_loss_without_targets() -> None:
    model = tiny_model()
    idx = torch.randint(0, TINY.vocab_size, (3, 7))
    logits, loss = model(idx)
    assert logits.shape == (3, 7, TINY.vocab_size)
    assert loss is None


def test_initial_loss_is_close_to_uniform() -> None:
    model = tiny_model()
    generator = torch.Generator().manual_seed(1)
    idx = torch.randint(0, TINY.vocab_size, (8, 16), generator=generator)
    targets = torch.randint(0, TINY.vocab_size, (8, 16), generator=generator)
    _, loss = model(idx, targets)
    assert loss is not None
    assert loss.item() == pytest.approx(math.log(TINY.vocab_size), abs=0.1)


def test_loss_is_mean_cross_entropy_ignoring_minus_one() -> None:
    model = tiny_model()
    idx = torch.randint(0, TINY.vocab_size, (2, 10))
    targets = torch.randint(0, TINY.vocab_size, (2, 10))
    targets[0, :4] = -1
    logits, loss = model(idx, targets)
    keep = targets != -1
    expected = F.cross_entropy(logits[keep], targets[keep])
    assert loss is not None
    torch.testing.assert_close(loss, expected)


def test_sequence_longer_than_block_size_is_a_one_line_error() -> None:
    model = tiny_model()
    with pytest.raises(ValueError) as err:
        model(torch.zeros(1, TINY.block_size + 1, dtype=torch.long))
    assert "sequence length 17 exceeds block_size=16" in one_line(err)
    model(torch.zeros(1, TINY.block_size, dtype=torch.long))


def test_attention_is_causal() -> None:
    model = tiny_model().eval()
    idx = torch.randint(0, TINY.vocab_size, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % TINY.vocab_size
    before, _ = model(idx)
    after, _ = model(changed)
    torch.testing.assert_close(before[:, :8], after[:, :8])
    assert not torch.allclose(before[:, 8:], after[:, 8:])


def test_dropout_only_in_training() -> None:
    model = tiny_model(dropout=0.5)
    idx = torch.randint(0, TINY.vocab_size, (2, 16))
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])


def test_backward_reaches_every_parameter() -> None:
    model = tiny_model()
    idx = torch.randint(0, TINY.vocab_size, (2, 16))
    _, loss = model(idx, idx.roll(-1, dims=1))
    assert loss is not None
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_no_bias_config_has_no_biases() -> None:
    model = tiny_model(bias=False)
    assert not [name for name, _ in model.named_parameters() if name.endswith("bias")]
    logits, _ = model(torch.zeros(1, 4, dtype=torch.long))
    assert logits.shape == (1, 4, TINY.vocab_size)


# ----------------------------------------------------------------------------- weights


def test_output_head_is_tied_to_token_embedding() -> None:
    model = tiny_model()
    assert model.lm_head.weight is model.wte.weight
    with torch.no_grad():
        model.wte.weight[3].fill_(1.0)
    assert torch.equal(model.lm_head.weight[3], torch.ones(TINY.n_embd))
    assert sum(1 for _ in model.parameters()) == len(list(model.state_dict())) - 1


def test_gpt2_init_scales_residual_projections() -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=8, n_head=4, n_embd=128, block_size=32, vocab_size=512))
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    assert len(blocks) == 8
    residual = torch.cat(
        [torch.cat([b.attn.c_proj.weight.flatten(), b.mlp.c_proj.weight.flatten()]) for b in blocks]
    )
    assert residual.std().item() == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.05)
    assert blocks[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.wpe.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert blocks[0].mlp.c_fc.bias is not None
    assert torch.count_nonzero(blocks[0].mlp.c_fc.bias) == 0
    assert torch.equal(model.ln_f.weight, torch.ones(128))


def test_num_params_of_gpt2_small() -> None:
    with torch.device("meta"):
        model = GPT(GPT2_SMALL)
    width, layers = 768, 12
    per_block = 12 * width * width + 13 * width
    total = 50257 * width + 1024 * width + layers * per_block + 2 * width
    assert model.num_params(non_embedding=False) == total == 124_439_808
    assert model.num_params() == total - 1024 * width


def test_flops_per_token_follows_palm_estimate() -> None:
    with torch.device("meta"):
        model = GPT(GPT2_SMALL)
    expected = 6 * model.num_params() + 12 * 12 * 12 * 64 * 1024
    assert model.flops_per_token() == pytest.approx(expected)
    assert 8.0e8 < model.flops_per_token() < 9.0e8


def test_generate_appends_tokens_and_crops_context() -> None:
    model = tiny_model()
    prompt = torch.randint(0, TINY.vocab_size, (2, TINY.block_size + 5))
    out = model.generate(prompt, max_new_tokens=6)
    assert out.shape == (2, TINY.block_size + 11)
    assert torch.equal(out[:, : prompt.size(1)], prompt)
    assert int(out.min()) >= 0 and int(out.max()) < TINY.vocab_size


def test_generate_is_deterministic_under_a_seeded_generator() -> None:
    model = tiny_model()
    prompt = torch.zeros(1, 1, dtype=torch.long)

    def sample(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return model.generate(prompt, 30, temperature=1.5, generator=generator)

    assert torch.equal(sample(123), sample(123))
    assert not torch.equal(sample(123), sample(124))


def test_top_k_one_is_greedy_decoding() -> None:
    model = tiny_model().eval()
    prompt = torch.randint(0, TINY.vocab_size, (2, 3))
    sampled = model.generate(prompt, 10, top_k=1, generator=torch.Generator().manual_seed(5))
    greedy = prompt
    for _ in range(10):
        logits, _ = model(greedy[:, -TINY.block_size :])
        greedy = torch.cat([greedy, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    assert torch.equal(sampled, greedy)


def test_generate_validates_arguments_and_restores_mode() -> None:
    model = tiny_model().train()
    prompt = torch.zeros(1, 2, dtype=torch.long)
    for temperature in (0.0, -1.0):
        with pytest.raises(ValueError) as err:
            model.generate(prompt, 1, temperature=temperature)
        assert "must be > 0" in one_line(err)
    with pytest.raises(ValueError):
        model.generate(prompt, 1, top_k=0)
    out = model.generate(prompt, 3, top_k=10_000)
    assert out.shape == (1, 5)
    assert model.training


# ----------------------------------------------------------------------------- flops


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA GH200 480GB", 989e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA L40S", 362.05e12),
        ("NVIDIA A10", 125e12),
        ("NVIDIA A10G", 70e12),
        ("AMD Instinct MI250X/MI250", 191.5e12),
        ("AMD Instinct MI300X", 1307.4e12),
        ("Intel(R) Data Center GPU Max 1550", 419.4e12),
        ("nvidia b200", 2250e12),
    ],
)
def test_peak_flops_matches_most_specific_name(name: str, expected: float) -> None:
    assert peak_flops(name) == pytest.approx(expected)


@pytest.mark.parametrize("name", ["cpu", "", "Apple M2 Max", "NVIDIA GeForce GTX 1080", "mps"])
def test_peak_flops_unknown_is_none(name: str) -> None:
    assert peak_flops(name) is None


def test_peak_table_is_plausible() -> None:
    assert all(10e12 < flops < 5e15 for flops in PEAK_BF16_FLOPS.values())
    assert all(key == key.lower() for key in PEAK_BF16_FLOPS)


def test_mfu() -> None:
    assert mfu(6e9, 26e3, "NVIDIA A100-SXM4-40GB") == pytest.approx(0.5)
    assert mfu(6e9, 26e3, "cpu") is None
    with pytest.raises(ValueError):
        mfu(-1.0, 1.0, "NVIDIA H100")
