"""Sampling explanations after an injected prompt pass, with a KV cache, cut at the closing quote.

Each row draws from its own seeded generator (Gumbel-max sampling at temperature T, no top-k/top-p),
so a sample depends only on (seed, feature, prompt, scale index, sample index), not on how features
were batched or sharded: a resumed run reproduces the same text. Finished rows are dropped from
the batch as they finish.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import torch
from torch import Tensor

from selfexplain.models import LoadedModel

END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|end|>", "<|eot_id|>", "</s>", "<|endoftext|>")


def row_seed(*parts: object) -> int:
    """A 63-bit seed from any identifying parts (stable across processes, unlike hash())."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@lru_cache(maxsize=8)
def _stop_tables(tokenizer: object) -> tuple[Tensor, Tensor]:
    """(is_stop (vocab,), has_quote (vocab,)) boolean tables for one tokenizer."""
    vocab_size = len(tokenizer)  # type: ignore[arg-type]
    is_stop = torch.zeros(vocab_size, dtype=torch.bool)
    eos = getattr(tokenizer, "eos_token_id", None)
    for token_id in eos if isinstance(eos, list) else [eos]:
        if token_id is not None and token_id < vocab_size:
            is_stop[token_id] = True
    vocab = tokenizer.get_vocab()  # type: ignore[attr-defined]
    for token in END_OF_TURN_TOKENS:
        if token in vocab:
            is_stop[vocab[token]] = True
    pieces = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))  # type: ignore[attr-defined]
    has_quote = torch.tensor(['"' in (p or "") for p in pieces], dtype=torch.bool)
    # Byte-level BPE and sentencepiece both spell '"' as itself inside token strings.
    return is_stop, has_quote


def _cut(text: str) -> str:
    return text.split('"', 1)[0].strip()


@torch.inference_mode()
def sample_continuations(
    lm: LoadedModel,
    first_logits: Tensor,  # (rows, vocab) logits at the last prompt token
    cache: object,  # KV cache of the injected prompt pass for the same rows
    seeds: list[int],  # one per row
    *,
    max_new_tokens: int,
    temperature: float,
) -> list[str]:
    """Sample up to `max_new_tokens` per row; stop at end of turn/sequence or a closing quote."""
    rows = first_logits.shape[0]
    is_stop, has_quote = _stop_tables(lm.tokenizer)
    vocab = min(first_logits.shape[-1], is_stop.shape[0])
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    tokens: list[list[int]] = [[] for _ in range(rows)]
    active = torch.arange(rows)  # row ids still generating, in cache order
    logits = first_logits[:, :vocab]
    for step in range(max_new_tokens):
        noise = torch.stack(
            [torch.rand(vocab, generator=generators[int(r)]) for r in active]
        ).clamp_(1e-20, 1.0)  # (active, vocab)
        gumbel = -torch.log(-torch.log(noise))
        chosen = torch.argmax(logits.float() / temperature + gumbel, dim=-1)  # (active,)
        done = is_stop[chosen] | has_quote[chosen]
        for row, token in zip(active.tolist(), chosen.tolist()):
            tokens[row].append(token)
        keep = ~done
        if step == max_new_tokens - 1 or not keep.any():
            break
        if not keep.all():
            cache.batch_select_indices(keep.nonzero().squeeze(-1))  # type: ignore[attr-defined]
            active, chosen = active[keep], chosen[keep]
        output = lm.model(
            input_ids=chosen[:, None].to(lm.device), past_key_values=cache, use_cache=True,
            logits_to_keep=1,
        )
        cache = output.past_key_values
        logits = output.logits[:, -1, :vocab]
    texts: list[str] = []
    for row_tokens in tokens:
        while row_tokens and bool(is_stop[row_tokens[-1]]):
            row_tokens = row_tokens[:-1]
        texts.append(_cut(lm.tokenizer.decode(row_tokens, skip_special_tokens=True)))  # type: ignore[attr-defined]
    return texts
