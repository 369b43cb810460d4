"""Model FLOP accounting from the shapes of every forward call, and a matmul peak to compare with."""

from __future__ import annotations

import time

import torch
from torch import nn


class FlopCounter:
    """Counts the FLOPs of the blocks and the unembedding a HF causal LM really runs while active.

    Each decoder block counts what passes through it: per token 2 x (the block's parameters) for
    the matmuls and 4 x context x d_model for attention scores and values (context from the
    block's position ids, so decode steps and prefix-cached passes count their real context); each
    logits row costs 2 x vocab x d_model. A forward that stops early (the round trip reads the
    residual entering block 2 and runs 2 of 30 blocks) counts only the blocks it ran: the counter
    until stop 33 hooked the whole model and charged such passes as full forwards, which put the
    default preset at 209 GFLOP per latent instead of about 100.
    `tokens` and `context_tokens` are full-model equivalents (block-tokens / blocks).
    """

    def __init__(self, model: nn.Module) -> None:
        from selfexplain.models import decoder_layers

        self.model = model
        config = model.config
        self.d_model = int(config.hidden_size)
        self.blocks = decoder_layers(model)
        self.n_layers = len(self.blocks)
        self.vocab = int(config.vocab_size)
        self.block_params = [sum(p.numel() for p in block.parameters()) for block in self.blocks]
        self.flops = 0.0
        self.block_tokens = 0  # tokens summed over the blocks they passed
        self.block_context = 0.0  # sum over (block, token) of the token's attention context
        self.logit_rows = 0

    @property
    def tokens(self) -> float:
        return self.block_tokens / self.n_layers

    @property
    def context_tokens(self) -> float:
        return self.block_context / self.n_layers

    def _block_hook(self, index: int):
        def hook(_module, args, kwargs, _output):  # after the block: a block a hook stopped never ran
            hidden = args[0] if args else kwargs["hidden_states"]
            batch, seq = hidden.shape[:2]
            positions = kwargs.get("position_ids")  # absolute: past the cached prefix
            mean_context = (float(positions.float().mean()) + 1 if positions is not None
                            else (seq + 1) / 2)
            tokens = batch * seq
            self.flops += 2 * self.block_params[index] * tokens
            self.flops += 4 * self.d_model * tokens * mean_context
            self.block_tokens += tokens
            self.block_context += tokens * mean_context
        return hook

    def _head_hook(self, _module, args):
        rows = args[0].shape[0] * args[0].shape[1]
        self.flops += 2 * self.vocab * self.d_model * rows
        self.logit_rows += rows

    def __enter__(self) -> "FlopCounter":
        self.handles = [block.register_forward_hook(self._block_hook(i), with_kwargs=True)
                        for i, block in enumerate(self.blocks)]
        self.handles.append(self.model.get_output_embeddings().register_forward_pre_hook(
            self._head_hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


def matmul_peak_gflops(d_model: int, d_ff: int, dtype: torch.dtype, rows: int = 2048,
                       seconds: float = 2.0) -> float:
    """Best dense GEMM throughput for the model's MLP shapes (rows x d_model @ d_model x d_ff)."""
    a = torch.randn(rows, d_model, dtype=dtype)
    b = torch.randn(d_model, d_ff, dtype=dtype)
    c = torch.randn(rows, d_ff, dtype=dtype)
    e = torch.randn(d_ff, d_model, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(5):
            a @ b
            c @ e
        elapsed = time.perf_counter() - start
        best = max(best, 5 * 2 * (2 * rows * d_model * d_ff) / elapsed / 1e9)
    return best


GEMMA_2B = dict(matmul_params=18 * (2 * 2048 * 2048 + 2 * 2048 * 256 + 3 * 2048 * 16384),
                n_layers=18, d_model=2048, vocab=256_000)
"""Gemma-2B(-it), the original work's model: 18 blocks, d_model 2048, MQA (8 query heads, one
key/value head of 256), MLP 16384, tied 256k vocabulary: 1.98B matmul parameters per token."""


def projected_flops(counter: FlopCounter, *, matmul_params: int, n_layers: int, d_model: int,
                    vocab: int) -> float:
    """The FLOPs the same token work (tokens, contexts, logit rows) costs on another model's
    shapes: how the measured run projects to, e.g., Gemma-2B. Prompt lengths differ a little
    between chat templates; the sampled answers' lengths are assumed the same."""
    return (2 * matmul_params * counter.tokens + 4 * n_layers * d_model * counter.context_tokens
            + 2 * vocab * d_model * counter.logit_rows)
