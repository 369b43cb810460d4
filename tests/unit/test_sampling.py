"""Inverse-CDF sampling: the softmax's distribution, never a zero-probability token, and the
same tokens for the same uniform numbers."""

from __future__ import annotations

import torch

from selfexplain.generate import sample_tokens


def test_sample_tokens_follows_the_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0, -float("inf"), 0.5]])  # token 3 has probability 0
    draws = 40_000
    uniform = torch.rand(draws, generator=torch.Generator().manual_seed(0))
    tokens = sample_tokens(logits.expand(draws, -1).clone(), uniform, temperature=1.0)
    frequency = torch.bincount(tokens, minlength=5).float() / draws
    expected = torch.softmax(logits[0], dim=-1)
    assert frequency[3] == 0
    assert torch.allclose(frequency, expected, atol=0.01)  # 4 sigma at n = 40k is under .01
    hot = sample_tokens(logits.expand(draws, -1).clone(), uniform, temperature=0.05)
    assert (hot == 2).float().mean() > 0.99  # low temperature: the argmax


def test_sample_tokens_edges_and_determinism():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    uniform = torch.tensor([0.0, 0.3, 0.7, 1.0 - 1e-7])
    first = sample_tokens(logits.clone(), uniform, 1.0)
    assert torch.equal(first, sample_tokens(logits.clone(), uniform, 1.0))
    assert ((first >= 0) & (first < 50)).all()
    same_row = sample_tokens(logits[:1].expand(3, -1).clone(), torch.tensor([0.1, 0.5, 0.9]), 1.0)
    assert (same_row[:-1] <= same_row[1:]).all()  # a larger uniform never picks an earlier token
