"""A GPT-2 style decoder-only transformer, meant to be read from top to bottom.

The layout follows GPT-2: token and learned position embeddings, pre-LayerNorm
blocks of causal self-attention and a 4x MLP, a final LayerNorm, and an output
head that shares its weights with the token embedding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ezpz_models.gpt.config import ModelConfig


class LayerNorm(nn.Module):
    """LayerNorm whose bias can be dropped, to match ``ModelConfig.bias=False``."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    """Multi-head attention where each position sees only itself and earlier positions."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # One matmul produces queries, keys and values for every head at once.
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        batch, seq, width = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (batch, seq, width) -> (batch, heads, seq, head_dim), the layout SDPA expects.
        shape = (batch, seq, self.n_head, width // self.n_head)
        q = q.view(shape).transpose(1, 2)
        k = k.view(shape).transpose(1, 2)
        v = v.view(shape).transpose(1, 2)
        # SDPA picks a fused kernel (flash / memory-efficient) when the device has one;
        # its dropout is not tied to self.training, so it is switched off explicitly.
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(batch, seq, width)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """The position-wise feed-forward layer: widen 4x, GELU, project back."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """A pre-LN transformer block: normalising before each sublayer keeps the residual
    stream an unnormalised sum, which trains stably without warm-up tricks."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """The language model: token ids in, next-token logits (and optionally the loss) out."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        blocks = [Block(config) for _ in range(config.n_layer)]
        self.blocks = nn.ModuleList(blocks)
        self.ln_f = LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: reading a token in and writing it out use one matrix, which saves
        # vocab_size * n_embd parameters and tends to improve small models.
        self.lm_head.weight = self.wte.weight

        self.apply(self._init_weights)
        # GPT-2 init: each residual projection adds to the stream once per sublayer, so
        # its std shrinks with depth to keep the stream's variance from growing.
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        for block in blocks:
            nn.init.normal_(block.attn.c_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.c_proj.weight, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count, tied weights once; ``non_embedding`` leaves out the position
        table, which is a lookup rather than compute (the token table is kept because it
        doubles as the output head)."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.wpe.weight.numel()
        return total

    def flops_per_token(self) -> float:
        """Training FLOPs (forward + backward) per token at a full ``block_size`` context.

        The PaLM paper's appendix B estimate: 6 per parameter for the matmuls, plus
        12 * layers * heads * head_dim * seq for the attention scores and weighted sum.
        """
        cfg = self.config
        attention = 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * cfg.block_size
        return float(6 * self.num_params() + attention)

    def _hidden(self, idx: Tensor) -> Tensor:
        """The final-LayerNorm activations, shared by ``forward`` and ``generate``."""
        if idx.dim() != 2:
            raise ValueError(f"idx has shape {tuple(idx.shape)}; expected (batch, seq) token ids")
        seq = idx.size(1)
        if seq > self.config.block_size:
            raise ValueError(
                f"sequence length {seq} exceeds block_size={self.config.block_size}; "
                f"pass at most {self.config.block_size} tokens"
            )
        pos = torch.arange(seq, dtype=torch.long, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits of shape (batch, seq, vocab_size), and the mean cross-entropy against
        ``targets`` when given (positions whose target is -1 are ignored)."""
        logits = self.lm_head(self._hidden(idx))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
        )
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Append ``max_new_tokens`` sampled tokens to ``idx`` (batch, seq) and return it.

        The model runs in eval mode while sampling (dropout would only add noise) and is
        put back afterwards. Sampling draws from ``generator``, so a seeded generator
        gives the same text every time.
        """
        if temperature <= 0:
            raise ValueError(
                f"temperature={temperature} must be > 0; use top_k=1 for greedy decoding"
            )
        if top_k is not None and top_k <= 0:
            raise ValueError(f"top_k={top_k} must be a positive integer or None")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
        was_training = self.training
        self.eval()
        try:
            for _ in range(max_new_tokens):
                context = idx[:, -self.config.block_size :]
                # Only the last position predicts the next token, so the (large) output
                # head runs on one position instead of the whole context.
                logits = self.lm_head(self._hidden(context)[:, -1, :]).float() / temperature
                if top_k is not None:
                    kth_best = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth_best, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                next_token = torch.multinomial(probs, num_samples=1, generator=generator)
                idx = torch.cat((idx, next_token), dim=1)
        finally:
            self.train(was_training)
        return idx
