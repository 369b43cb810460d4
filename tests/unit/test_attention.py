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


@pytest.mark.parametrize("family", ["llama", "gemma", "gemma3", "phi3"])
@pytest.mark.parametrize("kind", ["meaning", "repeat"])
def test_shared_prefix_cache_gives_what_a_copied_prefix_gives(family, kind):
    """A prompt pass and decode steps from a SharedPrefixCache (prefix stored once, rows written
    in place) give the probe and logits of the DynamicCache path that copies the prefix into
    every row, through a fan-out to repeated rows, a compaction and growth past the room asked."""
    from selfexplain.forward import PrefixCache, prompt_pass
    from selfexplain.prompts import build_prompt
    from selfexplain.shared_prefix import SharedPrefixCache

    copied = build_tiny_model(family, seed=3)
    shared = build_tiny_model(family, seed=3)
    use_grouped_attention(shared.model)
    vectors = torch.randn(5, copied.d_model, generator=torch.Generator().manual_seed(1))
    results = []
    for lm in (copied, shared):
        prompt = build_prompt(lm.tokenizer, lm.family, kind, "X")
        out = prompt_pass(lm, prompt, PrefixCache(lm, prompt), vectors, 1, 2, keep_cache=True,
                          answer_tokens=1)  # room for 1 answer token; 3 are decoded
        cache = out.cache
        steps = []
        cache.batch_select_indices(torch.tensor([0, 1, 2, 4]))  # outside inference mode
        with torch.inference_mode():
            cache.batch_select_indices(torch.tensor([0, 0, 2, 3]))  # one row per sample
            for step, keep in enumerate([None, torch.tensor([1, 3]), None]):
                if keep is not None:
                    cache.batch_select_indices(keep)  # finished rows dropped
                rows = cache.layers[0].keys.shape[0]
                ids = torch.arange(rows)[:, None] + 5 + step
                output = lm.model(input_ids=ids, past_key_values=cache, use_cache=True)
                cache = output.past_key_values
                steps.append(output.logits)
        results.append((out.probe, out.logits, *steps, cache))
    assert isinstance(results[1][-1], SharedPrefixCache)
    assert not isinstance(results[0][-1], SharedPrefixCache)
    for a, b in zip(results[0][:-1], results[1][:-1]):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(results[1][2][:2], results[1][3][:2], atol=1e-3)  # real steps


def test_shared_prefix_is_stored_once():
    """The prefix is one batch row, whatever the batch; each row holds only its own prompt
    tokens, as one contiguous block, and its answer in a buffer sized for the answer asked for."""
    from selfexplain.forward import PrefixCache, prompt_pass
    from selfexplain.prompts import build_prompt

    lm = build_tiny_model("llama", seed=3)
    use_grouped_attention(lm.model)
    prompt = build_prompt(lm.tokenizer, lm.family, "meaning", "X")
    out = prompt_pass(lm, prompt, PrefixCache(lm, prompt), torch.randn(7, lm.d_model), 1, 2,
                      keep_cache=True, answer_tokens=4)
    own = len(prompt.input_ids) - prompt.prefix_length
    layer = out.cache.layers[0]
    assert layer.prefix_keys.shape[0] == 1 and layer.prefix_keys.shape[2] == prompt.prefix_length
    assert layer.keys.shape[0] == 7 and layer.keys.shape[2] == own and layer.keys.is_contiguous()
    assert out.cache.get_seq_length() == len(prompt.input_ids)
    with torch.inference_mode():
        lm.model(input_ids=torch.zeros(7, 1, dtype=torch.long), past_key_values=out.cache,
                 use_cache=True)
    assert layer.answer_keys.shape == (7, layer.keys.shape[1], 4, layer.keys.shape[3])
    assert out.cache.get_seq_length() == len(prompt.input_ids) + 1
