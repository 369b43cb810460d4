"""Grouped-query attention (selfexplain.attention) gives eager attention's outputs on every family,
for a padded prompt batch and for cached decode steps."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import build_tiny_model
from selfexplain.attention import NAME, use_grouped_attention


@pytest.mark.parametrize("family", ["llama", "gemma", "gemma3", "phi3"])
def test_grouped_attention_matches_eager(family):
    eager = build_tiny_model(family, seed=3)
    grouped = build_tiny_model(family, seed=3)
    eager.model.set_attn_implementation("eager")
    use_grouped_attention(grouped.model)
    assert grouped.model.config._attn_implementation == NAME
    ids = torch.randint(5, eager.model.config.vocab_size, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # a right-padded row
    outputs = []
    for lm in (eager, grouped):
        with torch.inference_mode():
            prompt = lm.model(input_ids=ids, attention_mask=mask, use_cache=True)
            step = lm.model(input_ids=ids[:, :1], past_key_values=prompt.past_key_values,
                            use_cache=True)  # a decode step reading the cache
        outputs.append((prompt.logits, step.logits))
    assert torch.allclose(outputs[0][0], outputs[1][0], atol=1e-5)
    assert torch.allclose(outputs[0][1], outputs[1][1], atol=1e-5)
    assert not torch.allclose(outputs[0][1], outputs[0][0][:, -1:], atol=1e-3)  # a real step
