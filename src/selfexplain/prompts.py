"""The meaning and repeat prompts of METHOD.md section 2, tokenised, with placeholder positions.

Gemma and Phi-3 get the exact strings of the original work; every other chat model renders the user
turn with its own chat template and gets the prefilled answer appended (no end of turn after it).
Placeholder positions are found by token id, never by string search.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from selfexplain.errors import InputError

MEANING = "meaning"
REPEAT = "repeat"
PROMPT_KINDS = (MEANING, REPEAT)

SLOT = "{X}"
_QUESTIONS = {
    MEANING: 'What is the meaning of the word "{X}"?',
    REPEAT: 'Repeat "{X}" four times exactly as it is written.',
}
_ANSWERS = {
    MEANING: 'The meaning of the word "{X}" is "',
    REPEAT: '1. "{X}"\n2. "{X}"\n3. "{X}"\n4. "',
}
_EXACT_FORMS = {
    "gemma": "<start_of_turn>user\n{question}<end_of_turn>\n<start_of_turn>model\n{answer}",
    "phi3": "<|user|>\n{question}<|end|>\n<|assistant|>\n{answer}",
}


@dataclass(frozen=True)
class Prompt:
    """A tokenised prompt whose placeholder positions are to be patched."""

    kind: str
    text: str
    input_ids: Tensor  # (seq,) long
    placeholder_positions: Tensor  # (n_placeholders,) long, increasing
    placeholder_id: int

    @property
    def prefix_length(self) -> int:
        """Tokens before the first placeholder: identical for every row, computed once."""
        return int(self.placeholder_positions[0])

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def prompt_text(tokenizer: object, family: str, kind: str, placeholder: str) -> tuple[str, bool]:
    """The prompt string and whether the tokenizer should add its special tokens (BOS)."""
    if kind not in PROMPT_KINDS:
        raise InputError(f"unknown prompt kind {kind!r}: choose one of {PROMPT_KINDS}")
    question = _QUESTIONS[kind].replace(SLOT, placeholder)
    answer = _ANSWERS[kind].replace(SLOT, placeholder)
    if family in _EXACT_FORMS:
        return _EXACT_FORMS[family].format(question=question, answer=answer), True
    if getattr(tokenizer, "chat_template", None) is None:
        raise InputError(
            "this tokenizer has no chat template: self-explanation needs an instruction-tuned chat "
            "model (a base model with a plain prompt did not work for the authors)"
        )
    rendered = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return rendered + answer, False


def build_prompt(tokenizer: object, family: str, kind: str, placeholder: str = "X") -> Prompt:
    """Tokenise the prompt and locate every placeholder token (2 for meaning, 4 for repeat)."""
    text, add_special = prompt_text(tokenizer, family, kind, placeholder)
    expected = _QUESTIONS[kind].count(SLOT) + _ANSWERS[kind].count(SLOT)
    ids: list[int] = tokenizer(text, add_special_tokens=add_special).input_ids  # type: ignore[operator]
    placeholder_id = _placeholder_token_id(tokenizer, ids, placeholder, expected)
    positions = [i for i, token in enumerate(ids) if token == placeholder_id]
    return Prompt(
        kind=kind,
        text=text,
        input_ids=torch.tensor(ids, dtype=torch.long),
        placeholder_positions=torch.tensor(positions, dtype=torch.long),
        placeholder_id=placeholder_id,
    )


def _placeholder_token_id(tokenizer: object, ids: list[int], placeholder: str, expected: int) -> int:
    """The id that occurs exactly `expected` times and decodes to the placeholder in context."""
    counts: dict[int, int] = {}
    for token in ids:
        counts[token] = counts.get(token, 0) + 1
    for token, count in counts.items():
        if count != expected:
            continue
        decoded = tokenizer.decode([token])  # type: ignore[attr-defined]
        if decoded.strip() == placeholder.strip():
            return token
    raise InputError(
        f"placeholder {placeholder!r} is not a single token in context for this tokenizer: "
        "choose another placeholder (e.g. --placeholder X or --placeholder _)"
    )
