"""Sampling explanations after an injected prompt pass, with a KV cache, cut at the closing quote
or the first line break (a label is one clean line).

Each row draws from its own seeded generator (inverse-CDF sampling at temperature T, no top-k/top-p:
one uniform number per row and step), so a sample's random numbers depend only on (seed, feature,
prompt, scale index, sample index), not on how features were batched or sharded. The logits they
are drawn against can differ by rounding with the batch's size (bfloat16 on the CPU: 128 vs 512
rows a batch changed a few labels, stop 37), so a resumed run reproduces the same text because it
runs the same shards. Finished rows stay in the batch (their tokens are ignored) until a quarter
of it has finished, then the KV cache is compacted: each compaction copies the rows' own blocks,
so doing it at every finished row cost more than the wasted rows (9% of a feature's time in
bfloat16, profiled).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import torch
from torch import Tensor

from selfexplain.models import LoadedModel

COMPACT_AT = 0.25
"""Fraction of finished rows in the batch at which the KV cache is compacted."""

SAMPLE_ROWS = 32
"""Rows whose vocabulary-wide float32 sampling work (max, exp, cumsum, search) is done at a time:
32 x 49k floats stay in the CPU's cache; all 448 rows of a default chunk at once ran from memory,
3x slower per row (2-core Xeon, bf16: 113 vs 38 ms a step)."""

END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|end|>", "<|eot_id|>", "</s>", "<|endoftext|>")


def row_seed(*parts: object) -> int:
    """A 63-bit seed from any identifying parts (stable across processes, unlike hash())."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@lru_cache(maxsize=8)
def _stop_tables(tokenizer: object) -> tuple[Tensor, Tensor]:
    """(is_stop (vocab,), ends_answer (vocab,)) boolean tables for one tokenizer: a token ends the
    answer when it holds the closing quote or a line break (past either comes template debris,
    never the label)."""
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
    # decoded, not raw pieces: byte-level BPE spells a line break `Ċ`
    pieces = tokenizer.batch_decode([[i] for i in range(vocab_size)])  # type: ignore[attr-defined]
    ends_answer = torch.tensor(['"' in p or "\n" in p for p in pieces], dtype=torch.bool)
    return is_stop, ends_answer


def clean_label(text: str) -> str:
    """One clean line: the text before the closing quote and before any line break, runs of
    whitespace collapsed (seen as a label before: `focus.` + a line of template debris + a blank
    line + an unrelated sentence)."""
    return " ".join(text.split('"', 1)[0].split("\n", 1)[0].split())


@torch.inference_mode()
def sample_continuations(
    lm: LoadedModel,
    first_logits: Tensor,  # (n, vocab) logits at the last prompt token
    cache: object,  # KV cache of the injected prompt pass, one row per sample
    seeds: list[int],  # one per sample
    *,
    max_new_tokens: int,
    temperature: float,
    first_rows: Tensor | None = None,  # (samples,) row of first_logits per sample; None: the same
) -> list[str]:
    """Sample up to `max_new_tokens` per row; stop at end of turn/sequence or a closing quote.
    `first_rows` saves copying the first logits per sample (a scale's samples share them)."""
    rows = len(seeds)
    first_rows = torch.arange(rows) if first_rows is None else first_rows.cpu()
    is_stop, ends_answer = _stop_tables(lm.tokenizer)
    vocab = min(first_logits.shape[-1], is_stop.shape[0])
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    tokens: list[list[int]] = [[] for _ in range(rows)]
    in_cache = torch.arange(rows)  # row id of each cache row
    alive = torch.ones(rows, dtype=torch.bool)  # per cache row: still generating
    logits = first_logits[:, :vocab].cpu()  # (n, then cache rows; vocab), the model's dtype
    for step in range(max_new_tokens):
        live = alive.nonzero().squeeze(-1)  # cache rows still generating
        uniform = torch.cat([torch.rand(1, generator=generators[int(in_cache[c])]) for c in live])
        chosen = torch.zeros(len(in_cache), dtype=torch.long)  # finished rows feed token 0
        chosen[live] = sample_rows(logits, live if step else first_rows[live], uniform, temperature)
        for c in live.tolist():
            tokens[int(in_cache[c])].append(int(chosen[c]))
        alive[live] = ~(is_stop[chosen[live]] | ends_answer[chosen[live]])
        if step == max_new_tokens - 1 or not alive.any():
            break
        if (~alive).sum() >= COMPACT_AT * len(in_cache):  # compact: drop finished rows
            keep = alive.nonzero().squeeze(-1)
            cache.batch_select_indices(keep.to(lm.device))  # type: ignore[attr-defined]
            in_cache, alive, chosen = in_cache[keep], alive[keep], chosen[keep]
        output = lm.model(
            input_ids=chosen[:, None].to(lm.device), past_key_values=cache, use_cache=True,
            logits_to_keep=1,
        )
        cache = output.past_key_values
        logits = output.logits[:, -1, :vocab].cpu()
    texts: list[str] = []
    for row_tokens in tokens:
        while row_tokens and bool(is_stop[row_tokens[-1]]):
            row_tokens = row_tokens[:-1]
        texts.append(clean_label(lm.tokenizer.decode(row_tokens, skip_special_tokens=True)))  # type: ignore[attr-defined]
    return texts


def sample_rows(logits: Tensor, rows: Tensor, uniform: Tensor, temperature: float) -> Tensor:
    """`sample_tokens` for the given `rows` (n,) of `logits` (any rows, vocab; any float dtype,
    left untouched), `SAMPLE_ROWS` at a time in float32; uniform: (n,) -> (n,) ids. Row by row
    the same arithmetic as one call over all rows, so the same tokens."""
    chosen = torch.empty(len(rows), dtype=torch.long)
    for start in range(0, len(rows), SAMPLE_ROWS):
        block = logits.index_select(0, rows[start : start + SAMPLE_ROWS])  # a copy
        chosen[start : start + SAMPLE_ROWS] = sample_tokens(
            block.float(), uniform[start : start + SAMPLE_ROWS], temperature)
    return chosen


def sample_tokens(logits: Tensor, uniform: Tensor, temperature: float) -> Tensor:
    """Inverse-CDF sampling: per row, the first token whose cumulative probability exceeds the
    row's uniform number. logits: (rows, vocab) float32, overwritten; uniform: (rows,) in [0, 1)
    -> (rows,) ids. The unnormalised cumulative sum is compared with uniform x its total, which
    saves softmax's division pass (this runs over the whole vocabulary at every step)."""
    if temperature != 1.0:
        logits.div_(temperature)
    weights = logits.sub_(logits.max(dim=-1, keepdim=True).values).exp_()  # (rows, vocab)
    cdf = torch.cumsum(weights, dim=-1, out=weights)
    target = uniform[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_max(logits.shape[-1] - 1)
