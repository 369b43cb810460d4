"""Grouped-query attention that never copies keys and values per query head (CPU decode steps),
and keys/values of a shared prompt prefix that are stored once for the whole batch.

transformers' eager attention expands every key/value head to its query heads (`repeat_kv`) before
two matmuls. On a decode step of a big sampling batch that copy is most of the step: 448 rows of
SmolLM2 in bfloat16 spent 1.7 of 2.9 s in it (profiled here), against 0.46 s in every linear layer
together. Here the query heads of a group attend to their shared key/value head as one batched
matmul instead. Same result as eager to rounding (tests/unit/test_attention.py).

Every row of an injection batch continues the same prompt prefix (the tokens before the first
placeholder: 32 of the meaning prompt's 50 on SmolLM2). transformers' DynamicCache copies that
prefix into every row at the prompt pass, then copies the whole cache again at every decode step
(`torch.cat`) and at every compaction. `SharedPrefixCache` keeps the prefix once, (1, hkv, P, d),
each row's prompt tokens as one contiguous block and its answer in a buffer written in place;
`grouped_attention` reads the prefix with one matmul over the whole batch. Only the model's
registered attention reads it (`reads_shared_prefix`): elsewhere (CUDA SDPA) a DynamicCache as before.
The cache classes live in selfexplain.shared_prefix (importing transformers' cache takes seconds).
"""

from __future__ import annotations

from contextvars import ContextVar

import torch
from torch import Tensor, nn

NAME = "selfexplain_gqa"

_HANDOFF: ContextVar[tuple[Tensor, ...] | None] = ContextVar("shared_prefix", default=None)
"""The earlier blocks of the layer whose cache was just updated, for the attention call that
follows it in the same attention module (set by `SharedPrefixLayer.update` through `hand_off`,
taken by `grouped_attention`)."""


def hand_off(prefix_keys: Tensor, prefix_values: Tensor, past_keys: Tensor | None = None,
             past_values: Tensor | None = None) -> None:
    """Give the next `grouped_attention` call this layer's shared prefix, (1, hkv, P, d) each,
    and optionally each row's block between the prefix and the keys it is called with,
    (b, hkv, S, d) each."""
    _HANDOFF.set((prefix_keys, prefix_values, past_keys, past_values))


def grouped_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                      attention_mask: Tensor | None, scaling: float | None = None,
                      dropout: float = 0.0, softcap: float | None = None,
                      **_kwargs: object) -> tuple[Tensor, None]:
    """query (b, hq, q, d); key, value (b, hkv, kv, d); query head h reads key/value head
    h // (hq / hkv), as in `repeat_kv`. Returns ((b, q, hq, d), None)."""
    prefix = _HANDOFF.get()
    if prefix is not None:
        _HANDOFF.set(None)
    batch, q_heads, q_len, head_dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    groups = q_heads // kv_heads
    scaling = module.head_dim ** -0.5 if scaling is None else scaling
    grouped = query.reshape(batch, kv_heads, groups * q_len, head_dim)
    scores = torch.matmul(grouped, key.transpose(2, 3)) * scaling  # (b, hkv, groups * q, kv)
    prefix_len = past_len = 0
    past_values = None
    if prefix is not None:  # key/value hold only each row's newest tokens, after the blocks
        prefix_keys, prefix_values, past_keys, past_values = prefix  # (1 | b, hkv, P | S, d)
        prefix_len = prefix_keys.shape[2]
        flat = grouped.transpose(0, 1).reshape(kv_heads, batch * groups * q_len, head_dim)
        prefix_scores = torch.bmm(flat, prefix_keys[0].transpose(1, 2)) * scaling  # (hkv, bgq, P)
        prefix_scores = prefix_scores.view(kv_heads, batch, groups * q_len, prefix_len)
        blocks = [prefix_scores.transpose(0, 1)]
        if past_keys is not None:  # each row's prompt tokens: (b, hkv, gq, S)
            past_len = past_keys.shape[2]
            blocks.append(torch.matmul(grouped, past_keys.transpose(2, 3)) * scaling)
        scores = torch.cat([*blocks, scores], dim=-1)  # (b, hkv, gq, P + S + kv)
    total = prefix_len + past_len + kv_len
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:  # additive (b, 1, q, kv): the same for every head
        mask = attention_mask[:, :, None, :, :total]  # (b, 1, 1, q, kv)
        scores = (scores.view(batch, kv_heads, groups, q_len, total) + mask).view(
            batch, kv_heads, groups * q_len, total)
    elif q_len > 1:  # no mask built: causal over the last q_len positions
        past = total - q_len
        hidden = (torch.arange(total, device=scores.device)[None, :]
                  > past + torch.arange(q_len, device=scores.device)[:, None])  # (q, kv)
        scores = scores.view(batch, kv_heads, groups, q_len, total).masked_fill(
            hidden, float("-inf")).view(batch, kv_heads, groups * q_len, total)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if dropout and module.training:
        probs = nn.functional.dropout(probs, p=dropout)
    out = torch.matmul(probs[..., prefix_len + past_len :], value)  # (b, hkv, groups * q, d)
    if past_values is not None:
        out = out + torch.matmul(probs[..., prefix_len : prefix_len + past_len], past_values)
    if prefix is not None:
        flat_probs = probs[..., :prefix_len].transpose(0, 1).reshape(
            kv_heads, batch * groups * q_len, prefix_len)
        from_prefix = torch.bmm(flat_probs, prefix_values[0])  # (hkv, bgq, d)
        out = out + from_prefix.view(kv_heads, batch, groups * q_len, head_dim).transpose(0, 1)
    return out.view(batch, q_heads, q_len, head_dim).transpose(1, 2).contiguous(), None


def use_grouped_attention(model: nn.Module) -> None:
    """Switch a loaded transformers model to `grouped_attention` (registered once, with the eager
    additive mask it expects)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(NAME, grouped_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, eager_mask)
    model.set_attn_implementation(NAME)


def reads_shared_prefix(model: nn.Module) -> bool:
    """Does this model attend with `grouped_attention` (the only reader of a shared prefix)?"""
    return getattr(model.config, "_attn_implementation", None) == NAME
