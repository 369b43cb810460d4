"""Scale metrics of METHOD.md section 6, as pure tensor functions (no model, no hooks)."""

from __future__ import annotations

import torch
from torch import Tensor


def cosine(hidden: Tensor, direction: Tensor) -> Tensor:
    """cos(hidden, direction) along the last dim. hidden: (..., d); direction: (..., d) -> (...)."""
    return torch.nn.functional.cosine_similarity(hidden, direction, dim=-1, eps=1e-12)


def self_similarity(probe: Tensor, probe_zero: Tensor, directions: Tensor) -> Tensor:
    """selfsim(s) = cos(h_P^s, d) - cos(h_P^0, d).

    probe: (features, scales, d_model); probe_zero: (d_model,), shared by all features (at scale 0
    the placeholder holds zeros whatever the direction); directions: (features, d_model) unit.
    Returns (features, scales).
    """
    at_scale = cosine(probe, directions[:, None, :])  # (features, scales)
    at_zero = cosine(probe_zero[None, :], directions)  # (features,)
    return at_scale - at_zero[:, None]


def entropy(logits: Tensor) -> Tensor:
    """Shannon entropy (nats) of softmax(logits) along the last dim: (..., vocab) -> (...)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def cross_entropy(logits: Tensor, baseline_logits: Tensor) -> Tensor:
    """crossent(s) = -sum_t p^s(t) log q(t); logits (..., vocab), baseline (..., vocab) broadcast."""
    probs = torch.softmax(logits.float(), dim=-1)
    return -(probs * torch.log_softmax(baseline_logits.float(), dim=-1)).sum(dim=-1)


def minmax(values: Tensor) -> Tensor:
    """Min-max normalise along the last dim (the scale grid); a flat row becomes zeros."""
    low = values.min(dim=-1, keepdim=True).values
    high = values.max(dim=-1, keepdim=True).values
    return (values - low) / (high - low).clamp_min(1e-12)


def composite(selfsim: Tensor, entropy_like: Tensor, scales: Tensor, alpha: float,
              min_scale: float) -> Tensor:
    """composite(s) = alpha * mm(selfsim)(s) - (1 - alpha) * mm(entropy_like)(s).

    selfsim, entropy_like: (features, scales); scales: (scales,). Min-max runs over the whole grid;
    scales under `min_scale` then get the row's minimum so they are never chosen.
    """
    score = alpha * minmax(selfsim) - (1 - alpha) * minmax(entropy_like)  # (features, scales)
    below = scales < min_scale  # (scales,)
    if below.any() and not below.all():
        floor = score[:, ~below].min(dim=-1, keepdim=True).values  # (features, 1)
        score = torch.where(below[None, :], floor, score)
    return score


def nearest_scale_index(grid: Tensor, scales: Tensor) -> Tensor:
    """Index into `grid` (sorted, (n,)) of the nearest grid point for each of `scales` (m,)."""
    return (scales[:, None] - grid[None, :]).abs().argmin(dim=-1)
