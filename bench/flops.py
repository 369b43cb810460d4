"""Model FLOP accounting from the shapes of every forward call, and a matmul peak to compare with."""

from __future__ import annotations

import time

import torch
from torch import nn


class FlopCounter:
    """Counts the FLOPs of every top-level forward of a HF causal LM while active.

    Per processed token: 2 x (non-embedding parameters) for the matmuls, 4 x context x d_model per
    layer for attention scores and values; per logits row: 2 x vocab x d_model. Decode steps and
    prefix-cached passes are counted with their real context length.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        config = model.config
        self.d_model = int(config.hidden_size)
        self.n_layers = int(config.num_hidden_layers)
        self.vocab = int(config.vocab_size)
        embedding = model.get_input_embeddings().weight.numel()
        total = sum(p.numel() for p in model.parameters())
        head = model.get_output_embeddings().weight
        tied = head.data_ptr() == model.get_input_embeddings().weight.data_ptr()
        self.matmul_params = total - embedding - (0 if tied else head.numel())
        self.flops = 0.0
        self.tokens = 0
        self.context_tokens = 0.0  # sum over processed tokens of their attention context
        self.logit_rows = 0

    def _hook(self, _module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            return
        batch, seq = input_ids.shape
        cache = kwargs.get("past_key_values")
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        keep = kwargs.get("logits_to_keep", 0) or seq
        tokens = batch * seq
        mean_context = past + (seq + 1) / 2
        self.flops += 2 * self.matmul_params * tokens
        self.flops += 4 * self.n_layers * self.d_model * tokens * mean_context
        self.flops += 2 * self.vocab * self.d_model * batch * min(int(keep), seq)
        self.tokens += tokens
        self.context_tokens += tokens * mean_context
        self.logit_rows += batch * min(int(keep), seq)

    def __enter__(self) -> "FlopCounter":
        self.handle = self.model.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


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
