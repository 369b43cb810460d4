"""Hooks: exactly the placeholder positions are patched, decode steps pass, the model is restored."""

import pytest
import torch

from selfexplain.inject import captured_at, replaced_at
from selfexplain.prompts import MEANING, build_prompt


def _forward(lm, ids):
    with torch.inference_mode():
        return lm.model(input_ids=ids, use_cache=False).logits


def test_only_placeholder_positions_are_replaced(tiny_lm_any):
    lm = tiny_lm_any
    prompt = build_prompt(lm.tokenizer, lm.family, MEANING)
    ids = prompt.input_ids[None].repeat(2, 1)
    vectors = torch.randn(2, lm.d_model)
    # A capture hook registered after the replacing hook sees the replaced residual.
    seen = {}

    def spy(_m, args, kwargs):
        seen["hidden"] = (args[0] if args else kwargs["hidden_states"]).clone()

    with torch.inference_mode():
        handle = lm.layers[2].register_forward_pre_hook(spy, with_kwargs=True)
        lm.model(input_ids=ids, use_cache=False)
        clean = seen["hidden"]
        handle.remove()
        with replaced_at(lm.layers[2], prompt.placeholder_positions, vectors):
            handle = lm.layers[2].register_forward_pre_hook(spy, with_kwargs=True)
            lm.model(input_ids=ids, use_cache=False)
            handle.remove()
    patched = seen["hidden"]
    positions = set(prompt.placeholder_positions.tolist())
    for pos in range(ids.shape[1]):
        if pos in positions:
            torch.testing.assert_close(patched[:, pos], vectors)
        else:
            torch.testing.assert_close(patched[:, pos], clean[:, pos])


def test_hook_is_removed_and_model_restored_even_on_error(tiny_lm):
    lm = tiny_lm
    prompt = build_prompt(lm.tokenizer, lm.family, MEANING)
    ids = prompt.input_ids[None]
    before = _forward(lm, ids)
    with pytest.raises(RuntimeError):
        with replaced_at(lm.layers[2], prompt.placeholder_positions, torch.randn(1, lm.d_model)):
            assert _forward(lm, ids).sub(before).abs().max() > 0
            raise RuntimeError("boom")
    assert not lm.layers[2]._forward_pre_hooks
    torch.testing.assert_close(_forward(lm, ids), before)


def test_decode_steps_pass_through_untouched(tiny_lm):
    lm = tiny_lm
    from transformers import DynamicCache

    ids = build_prompt(lm.tokenizer, lm.family, MEANING).input_ids[None]
    next_token = torch.tensor([[5]])
    with torch.inference_mode():
        cache = DynamicCache(config=lm.model.config)
        lm.model(input_ids=ids, past_key_values=cache, use_cache=True)
        import copy

        cache_copy = copy.deepcopy(cache)
        plain = lm.model(input_ids=next_token, past_key_values=cache, use_cache=True).logits
        # Positions [0] would hit the single decode token if the hook did not skip it.
        with replaced_at(lm.layers[2], torch.tensor([0]), torch.full((1, lm.d_model), 9.0)):
            hooked = lm.model(input_ids=next_token, past_key_values=cache_copy, use_cache=True).logits
    torch.testing.assert_close(hooked, plain)


def test_captured_at_reads_last_position(tiny_lm):
    lm = tiny_lm
    ids = build_prompt(lm.tokenizer, lm.family, MEANING).input_ids[None]
    with torch.inference_mode(), captured_at(lm.layers[4]) as probe:
        out = lm.model(input_ids=ids, use_cache=False, output_hidden_states=True)
    torch.testing.assert_close(probe.last, out.hidden_states[4][:, -1])
    assert not lm.layers[4]._forward_pre_hooks
