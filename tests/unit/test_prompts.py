"""Prompts: the exact Gemma/Phi-3 strings, generic chat templates, placeholder found by token id."""

import pytest

from selfexplain.errors import InputError
from selfexplain.prompts import MEANING, REPEAT, build_prompt


def test_gemma_exact_meaning_prompt(tiny_lm_any):
    lm = tiny_lm_any
    prompt = build_prompt(lm.tokenizer, lm.family, MEANING)
    if lm.family == "gemma":
        assert prompt.text == (
            '<start_of_turn>user\nWhat is the meaning of the word "X"?<end_of_turn>\n'
            '<start_of_turn>model\nThe meaning of the word "X" is "'
        )
        assert prompt.input_ids[0] == lm.tokenizer.bos_token_id  # the tokenizer adds <bos>
    elif lm.family == "phi3":
        assert prompt.text == (
            '<|user|>\nWhat is the meaning of the word "X"?<|end|>\n<|assistant|>\n'
            'The meaning of the word "X" is "'
        )
    else:  # generic: the model's own chat template, then the prefilled answer
        assert prompt.text.startswith("<|im_start|>user\nWhat is the meaning")
        assert prompt.text.endswith('<|im_start|>assistant\nThe meaning of the word "X" is "')
    assert len(prompt.placeholder_positions) == 2
    for pos in prompt.placeholder_positions.tolist():
        assert prompt.input_ids[pos] == prompt.placeholder_id
    assert lm.tokenizer.decode([prompt.placeholder_id]) == "X"


def test_repeat_prompt_has_four_slots(tiny_lm_any):
    prompt = build_prompt(tiny_lm_any.tokenizer, tiny_lm_any.family, REPEAT)
    assert len(prompt.placeholder_positions) == 4
    assert prompt.text.endswith('1. "X"\n2. "X"\n3. "X"\n4. "')
    assert prompt.prefix_length == int(prompt.placeholder_positions[0])


def test_multi_token_placeholder_is_refused(tiny_lm):
    # The character-level tokenizer splits "XY" into two tokens.
    with pytest.raises(InputError, match="not a single token"):
        build_prompt(tiny_lm.tokenizer, tiny_lm.family, MEANING, placeholder="XY")


def test_model_without_chat_template_is_refused(tiny_lm):
    import copy

    tokenizer = copy.deepcopy(tiny_lm.tokenizer)
    tokenizer.chat_template = None
    with pytest.raises(InputError, match="chat template"):
        build_prompt(tokenizer, "generic", MEANING)
