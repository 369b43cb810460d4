"""Round trip: read each candidate explanation back through the model and ask whether it lands on
the injected direction (issue 9).

An explanation that names the concept should, once the model reads it, put a residual close to the
direction we injected at the same layer. The score of a text is the largest cosine, over its
tokens, between (residual entering the injection layer - the mean residual of ordinary text) and
the unit direction. Only the first `layer` blocks run (the forward stops at the hook), so scoring
all candidates of a feature costs a few percent of one sampling step.

The token where that cosine peaks is the answer's part that reads back as the direction: of
`to order` it is ` order`, of `10/19/20` the `/`. The default preset recovers the literal token
from it (`explain.best_reading_answer`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from selfexplain.forward import residual_entering
from selfexplain.models import LoadedModel

CONTEXT = 'It means "'
"""Text before each explanation, so its first token never sits at position 0 (the attention
sink, whose residual is huge and shared by every text)."""


class Peak(NamedTuple):
    """A text's round-trip score and the token (decoded) where it is reached; None if empty."""

    score: float
    token: str | None


def _encode(lm: LoadedModel, texts: list[str], context: str) -> tuple[list[int], list[list[int]]]:
    """Token ids of `context`, and of `context` + each text (the text tokenised on its own)."""
    tokenizer = lm.tokenizer
    prefix = tokenizer(context, add_special_tokens=False).input_ids
    return prefix, [prefix + tokenizer(text, add_special_tokens=False).input_ids for text in texts]


def token_residuals(lm: LoadedModel, texts: list[str], layer: int, context: str = CONTEXT,
                    batch: int = 64) -> list[Tensor]:
    """Residual entering block `layer` at every token of each text after `context`.

    Returns one (tokens_i, d_model) float32 tensor per text; an empty text gives (0, d_model).
    Texts are right-padded in batches; the causal mask keeps padding from touching real tokens.
    """
    return _residuals(lm, *_encode(lm, texts, context), layer, batch)


@torch.inference_mode()
def _residuals(lm: LoadedModel, prefix: list[int], encoded: list[list[int]], layer: int,
               batch: int = 64) -> list[Tensor]:
    """`token_residuals` of texts already encoded by `_encode`."""
    tokenizer = lm.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[Tensor] = [torch.zeros(0, lm.d_model) for _ in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths together
    for start in range(0, len(order), batch):
        rows = [i for i in order[start : start + batch] if len(encoded[i]) > len(prefix)]
        if not rows:
            continue
        width = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[r, : len(encoded[i])] = 1
        hidden = residual_entering(lm, layer, ids, mask).float().cpu()  # (rows, width, d_model)
        for r, i in enumerate(rows):
            out[i] = hidden[r, len(prefix) : len(encoded[i])]
    return out


class RoundTrip:
    """Scores texts against directions at one layer of one model (the text mean computed once)."""

    def __init__(self, lm: LoadedModel, layer: int, reference_texts: list[str],
                 context: str = CONTEXT) -> None:
        self.lm, self.layer, self.context = lm, layer, context
        reference = token_residuals(lm, reference_texts, layer, context)
        self.mean = torch.cat(reference).mean(dim=0)  # (d_model,) mean residual of ordinary text

    def scores(self, texts: list[str], directions: Tensor) -> list[float]:
        """Per text, max over its tokens of cos(residual - mean, direction); 0 for empty text.

        directions: (n_texts, d_model) unit vectors, the direction each text is scored against.
        """
        return [peak.score for peak in self.peaks(texts, directions)]

    def peaks(self, texts: list[str], directions: Tensor) -> list[Peak]:
        """Per text, its score (as `scores`) and the token where the cosine peaks."""
        prefix, encoded = _encode(self.lm, texts, self.context)
        residuals = _residuals(self.lm, prefix, encoded, self.layer)
        out: list[Peak] = []
        for ids, tokens, direction in zip(encoded, residuals, directions):
            if tokens.shape[0] == 0:
                out.append(Peak(0.0, None))
                continue
            centred = tokens - self.mean  # (tokens, d_model)
            cosine = centred @ direction.float() / centred.norm(dim=-1).clamp_min(1e-12)
            best = int(cosine.argmax())
            out.append(Peak(float(cosine[best]),
                            self.lm.tokenizer.decode([ids[len(prefix) + best]])))
        return out
