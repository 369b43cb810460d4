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


def test_a_label_is_one_clean_line():
    from selfexplain.generate import clean_label

    # the top label once seen on the default SAE, and the closing-quote rule
    assert clean_label("focus.\n{'MOLES'}EQUI')\n\nA leaf was where the heart was") == "focus."
    assert clean_label('a small  dog" or "a puppy') == "a small dog"
    assert clean_label("  tab\tand   spaces ") == "tab and spaces"
    assert clean_label("\nonly debris after a break") == ""


def test_sampling_stops_at_a_line_break(tiny_lm):
    """A sampled answer never holds a line break: the token that writes one ends the answer,
    whatever its spelling in the vocabulary (byte-level BPE writes it `Ċ`)."""
    from selfexplain.generate import _stop_tables, sample_continuations
    from selfexplain.forward import PrefixCache, prompt_pass
    from selfexplain.prompts import build_prompt

    lm = tiny_lm
    _, ends_answer = _stop_tables(lm.tokenizer)
    newline = lm.tokenizer.convert_tokens_to_ids("\n")
    assert bool(ends_answer[newline]) and bool(ends_answer[lm.tokenizer.convert_tokens_to_ids('"')])
    assert not bool(ends_answer[lm.tokenizer.convert_tokens_to_ids("a")])
    prompt = build_prompt(lm.tokenizer, lm.family, "meaning")
    out = prompt_pass(lm, prompt, PrefixCache(lm, prompt), torch.randn(64, lm.d_model), 2, 4,
                      keep_cache=True)
    logits = out.logits.clone()
    logits[:, newline] += 3.0  # make line breaks frequent in the first token too
    texts = sample_continuations(lm, logits, out.cache, list(range(64)), max_new_tokens=12,
                                 temperature=1.0)
    assert all("\n" not in t and t == t.strip() for t in texts)
    assert sum(t == "" for t in texts) > 0  # some answers began with the line break
