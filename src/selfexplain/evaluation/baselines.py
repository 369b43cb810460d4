"""Baselines that need no LLM, each producing ranked token "labels" scored like self-explanations.

- VocabProj: the top tokens of the unembedding applied to the direction (through the final norm's
  gain), i.e. the logit lens of `d`.
- TokenChange: the tokens whose next-token probability rises most, averaged over a few neutral
  contexts, when `scale * d` is added to the residual entering the injection layer at every
  position but the first.
- Max-activating tokens: the tokens an SAE feature fires on most (from its feature stats).

Labels are decoded tokens, stripped, deduplicated case-insensitively and restricted to tokens with a
letter or digit (a generous reading: punctuation never counts against a baseline).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import polars as pl
import torch
from torch import Tensor, nn

from selfexplain.models import LoadedModel

NEUTRAL_CONTEXTS = (
    "The next word is",
    "I would like to talk about",
    "She said it was",
    "Here is a short note on",
    "In the morning we saw the",
    "This page is about",
)
"""Short prompts whose next token is open; TokenChange averages over them."""


def _final_norm(lm: LoadedModel) -> nn.Module | None:
    inner = getattr(lm.model, "model", None)
    return getattr(inner, "norm", None) if inner is not None else None


def _readable(lm: LoadedModel, ids: Sequence[int], k: int) -> list[str]:
    """Decoded tokens in order, stripped, deduplicated (case-insensitive), words only, first k."""
    out: list[str] = []
    seen: set[str] = set()
    for token_id in ids:
        text = lm.tokenizer.decode([int(token_id)]).strip()  # type: ignore[attr-defined]
        key = text.lower()
        if not text or not any(ch.isalnum() for ch in text) or key in seen:
            continue
        seen.add(key)
        out.append(text)
        if len(out) == k:
            break
    return out


@torch.inference_mode()
def vocabproj_scores(lm: LoadedModel, directions: Tensor) -> Tensor:
    """Logit-lens scores (n, vocab) of unit directions (n, d_model)."""
    unembed = lm.model.get_output_embeddings().weight.float()  # (vocab, d_model)
    norm = _final_norm(lm)
    gain = getattr(norm, "weight", None)
    scaled = directions.float()
    if gain is not None:
        gain = gain.float()
        if lm.family == "gemma":  # Gemma's RMSNorm multiplies by (1 + weight)
            gain = 1.0 + gain
        scaled = scaled * gain  # (n, d_model)
    return scaled @ unembed.T  # (n, vocab)


def vocabproj(lm: LoadedModel, directions: Tensor, k: int = 10) -> list[list[str]]:
    """Top-k readable tokens of the unembedding of each direction (n, d_model)."""
    scores = vocabproj_scores(lm, directions)
    top = scores.topk(min(scores.shape[-1], 8 * k), dim=-1).indices  # (n, 8k): room to filter
    return [_readable(lm, row.tolist(), k) for row in top]


@contextmanager
def added_at(layer: nn.Module, vectors: Tensor, start: int = 1) -> Iterator[None]:
    """Add `vectors` (batch, d_model) to the residual entering `layer` at positions >= start."""

    def hook(_module: nn.Module, args: tuple, kwargs: dict):
        hidden = args[0] if args else kwargs["hidden_states"]  # (batch, seq, d_model)
        hidden = hidden.clone()
        hidden[:, start:] += vectors[:, None, :].to(hidden.dtype)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@torch.inference_mode()
def tokenchange_scores(lm: LoadedModel, directions: Tensor, layer: int, scale: float, *,
                       contexts: Sequence[str] = NEUTRAL_CONTEXTS, batch: int = 64,
                       metric: str = "prob") -> Tensor:
    """Mean rise (n, vocab) in next-token probability (`prob`) or log-probability (`logprob`)
    when `scale * d` is added at `layer`, over `contexts`."""
    if metric not in ("prob", "logprob"):
        raise ValueError(f"unknown TokenChange metric {metric!r}: prob or logprob")
    transform = torch.softmax if metric == "prob" else torch.log_softmax
    total = torch.zeros(directions.shape[0], lm.model.get_output_embeddings().weight.shape[0])
    for context in contexts:
        ids = lm.tokenizer(context, return_tensors="pt").input_ids.to(lm.device)  # (1, seq)
        clean = transform(lm.model(input_ids=ids, logits_to_keep=1).logits[0, -1].float(), -1)
        for start in range(0, directions.shape[0], batch):
            chunk = directions[start : start + batch].float()  # (b, d_model)
            with added_at(lm.layers[layer], scale * chunk):
                logits = lm.model(input_ids=ids.expand(chunk.shape[0], -1),
                                  logits_to_keep=1).logits[:, -1].float()  # (b, vocab)
            total[start : start + chunk.shape[0], : logits.shape[-1]] += (
                transform(logits, -1) - clean[None, :]
            ).cpu()
    return total / len(contexts)


def tokenchange(lm: LoadedModel, directions: Tensor, layer: int, scale: float, k: int = 10, *,
                contexts: Sequence[str] = NEUTRAL_CONTEXTS, metric: str = "prob") -> list[list[str]]:
    """Top-k readable tokens whose probability rises most when the direction is amplified."""
    scores = tokenchange_scores(lm, directions, layer, scale, contexts=contexts, metric=metric)
    top = scores.topk(min(scores.shape[-1], 8 * k), dim=-1).indices
    return [_readable(lm, row.tolist(), k) for row in top]


def maxact_tokens(stats: pl.DataFrame, features: Sequence[int], k: int = 10) -> list[list[str]]:
    """The tokens each feature fires on most, from a feature-stats frame (`feature`, `top_tokens`).

    `top_tokens` may hold strings or structs with a `token` field; missing features get [].
    """
    by_feature = dict(zip(stats["feature"].to_list(), stats["top_tokens"].to_list()))
    out = []
    for feature in features:
        tokens = by_feature.get(int(feature)) or []
        labels: list[str] = []
        seen: set[str] = set()
        for item in tokens:
            text = item.get("token") if isinstance(item, dict) else item
            text = (text or "").strip()
            if text and text.lower() not in seen and any(ch.isalnum() for ch in text):
                seen.add(text.lower())
                labels.append(text)
        out.append(labels[:k])
    return out
