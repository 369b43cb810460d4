"""Batched prompt passes with injection, sharing the prompt prefix through a KV cache.

Every row of a batch is the same prompt with a different vector at the placeholder positions, so
all tokens before the first placeholder are identical: they are run once (batch 1) and their
keys/values are broadcast to the batch. Only the suffix is run per row, and only the last
position's logits are computed (`logits_to_keep=1`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from selfexplain.inject import captured_at, replaced_at
from selfexplain.models import LoadedModel
from selfexplain.prompts import Prompt


class PromptPass(NamedTuple):
    """What one batched prompt pass yields."""

    probe: Tensor  # (batch, d_model) residual entering the probe layer at the last prompt token
    logits: Tensor  # (batch, vocab) next-token logits at the last prompt token (float32, CPU)
    cache: object | None  # the KV cache after the prompt (for generation), or None


def _cache_class():
    from transformers import DynamicCache

    return DynamicCache


class PrefixCache:
    """Keys/values of a prompt's shared prefix (batch 1), computed once per model and prompt."""

    def __init__(self, lm: LoadedModel, prompt: Prompt) -> None:
        self.length = prompt.prefix_length
        self.layers: list[tuple[Tensor, Tensor]] = []
        if self.length == 0:
            return
        prefix_ids = prompt.input_ids[None, : self.length].to(lm.device)  # (1, prefix)
        cache = _cache_class()(config=lm.model.config)
        with torch.inference_mode():
            lm.model(input_ids=prefix_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        self.layers = [(layer.keys, layer.values) for layer in cache.layers]

    def expanded(self, lm: LoadedModel, batch: int) -> object:
        """A fresh cache holding the prefix for `batch` rows (broadcast views, no copy)."""
        cache = _cache_class()(config=lm.model.config)
        for index, (keys, values) in enumerate(self.layers):
            # (1, heads, prefix, head_dim) -> (batch, heads, prefix, head_dim)
            cache.update(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1), index)
        return cache

    def for_pass(self, lm: LoadedModel, batch: int, answer_tokens: int) -> object:
        """The cache a prompt pass of `batch` rows starts from. Where the model's attention reads
        a shared prefix (selfexplain.attention), the prefix stays stored once, each row's prompt
        tokens are one block and each row gets room for `answer_tokens` written in place; else
        `expanded`."""
        from selfexplain.attention import reads_shared_prefix

        if not self.length:
            return _cache_class()(config=lm.model.config)
        if reads_shared_prefix(lm.model):
            from selfexplain.shared_prefix import SharedPrefixCache

            return SharedPrefixCache(self.layers, answer_tokens)
        return self.expanded(lm, batch)


@torch.inference_mode()
def prompt_pass(
    lm: LoadedModel,
    prompt: Prompt,
    prefix: PrefixCache,
    vectors: Tensor,  # (batch, d_model) written at every placeholder position
    injection_layer: int,
    probe_layer: int,
    *,
    keep_cache: bool = False,
    answer_tokens: int = 0,
) -> PromptPass:
    """Run the prompt for every row with its vector injected; read probe residual and logits.
    `answer_tokens`: how many tokens will be sampled from the kept cache (room reserved)."""
    batch = vectors.shape[0]
    suffix = prompt.input_ids[prefix.length :].to(lm.device)  # (suffix,)
    input_ids = suffix[None, :].expand(batch, -1)  # (batch, suffix)
    positions = (prompt.placeholder_positions - prefix.length).to(lm.device)  # (n_placeholders,)
    cache = prefix.for_pass(lm, batch, answer_tokens if keep_cache else 0)
    with replaced_at(lm.layers[injection_layer], positions, vectors), captured_at(
        lm.layers[probe_layer]
    ) as probe:
        output = lm.model(
            input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1
        )
    assert probe.last is not None
    return PromptPass(  # metrics and sampling run on the CPU whatever the model's device
        probe=probe.last.float().cpu(),
        logits=output.logits[:, -1].float().cpu(),
        cache=output.past_key_values if keep_cache else None,
    )


class _Stop(Exception):
    """Raised by `residual_entering`'s hook once the wanted block is reached."""


@torch.inference_mode()
def residual_entering(lm: LoadedModel, layer: int, input_ids: Tensor,
                      attention_mask: Tensor | None = None) -> Tensor:
    """The residual entering block `layer` (batch, seq, d_model) for `input_ids` (batch, seq).

    The forward stops at that block (its pre-hook raises), so later blocks and the unembedding
    never run: reading an early layer costs a few percent of a full forward.
    """
    seen: list[Tensor] = []

    def hook(_module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).detach())
        raise _Stop

    handle = lm.layers[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        lm.model(input_ids=input_ids.to(lm.device), use_cache=False, logits_to_keep=1,
                 attention_mask=None if attention_mask is None else attention_mask.to(lm.device))
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[0]


def residual_norm(lm: LoadedModel, layer: int, texts: list[str]) -> float:
    """Mean L2 norm of the residual entering `layer` over `texts`, position 0 dropped (sink)."""
    norms: list[Tensor] = []
    for text in texts:
        ids = lm.tokenizer(text, return_tensors="pt").input_ids  # (1, seq)
        norms.append(residual_entering(lm, layer, ids)[0, 1:].float().norm(dim=-1))  # (seq - 1,)
    return float(torch.cat(norms).mean())
