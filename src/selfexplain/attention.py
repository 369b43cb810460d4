"""Grouped-query attention that never copies keys and values per query head (CPU decode steps).

transformers' eager attention expands every key/value head to its query heads (`repeat_kv`) before
two matmuls. On a decode step of a big sampling batch that copy is most of the step: 448 rows of
SmolLM2 in bfloat16 spent 1.7 of 2.9 s in it (profiled here), against 0.46 s in every linear layer
together. Here the query heads of a group attend to their shared key/value head as one batched
matmul instead. Same result as eager to rounding (tests/unit/test_attention.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

NAME = "selfexplain_gqa"


def grouped_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                      attention_mask: Tensor | None, scaling: float | None = None,
                      dropout: float = 0.0, softcap: float | None = None,
                      **_kwargs: object) -> tuple[Tensor, None]:
    """query (b, hq, q, d); key, value (b, hkv, kv, d); query head h reads key/value head
    h // (hq / hkv), as in `repeat_kv`. Returns ((b, q, hq, d), None)."""
    batch, q_heads, q_len, head_dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    groups = q_heads // kv_heads
    scaling = module.head_dim ** -0.5 if scaling is None else scaling
    grouped = query.reshape(batch, kv_heads, groups * q_len, head_dim)
    scores = torch.matmul(grouped, key.transpose(2, 3)) * scaling  # (b, hkv, groups * q, kv)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:  # additive (b, 1, q, kv): the same for every head
        mask = attention_mask[:, :, None, :, :kv_len]  # (b, 1, 1, q, kv)
        scores = (scores.view(batch, kv_heads, groups, q_len, kv_len) + mask).view(
            batch, kv_heads, groups * q_len, kv_len)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if dropout and module.training:
        probs = nn.functional.dropout(probs, p=dropout)
    out = torch.matmul(probs, value)  # (b, hkv, groups * q, d)
    return out.view(batch, q_heads, q_len, head_dim).transpose(1, 2).contiguous(), None


def use_grouped_attention(model: nn.Module) -> None:
    """Switch a loaded transformers model to `grouped_attention` (registered once, with the eager
    additive mask it expects)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(NAME, grouped_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, eager_mask)
    model.set_attn_implementation(NAME)
