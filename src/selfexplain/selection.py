"""Ranking sampled explanations: small named strategies over one feature's candidates.

Each strategy maps (candidates of one prompt, that prompt's sweep, and each candidate's round-trip
score) to one score per candidate, higher is better, plus named extra scores stored with the
candidate so users see why it won. Strategies that do not use the round trip ignore it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from selfexplain.metrics import minmax


class SweepScores(NamedTuple):
    """One feature's metrics over the metric grid, for one prompt."""

    scales: Tensor  # (scales,) absolute
    selfsim: Tensor  # (scales,)
    entropy: Tensor  # (scales,) entropy or cross-entropy, whichever the config scores with
    composite: Tensor  # (scales,)
    min_scale: float


class Ranked(NamedTuple):
    score: list[float]
    extra: list[dict[str, float]]


_WORD = re.compile(r"[a-z0-9']+")
_STOP = frozenset(
    "a an the of to in on and or for is are be as by with that this it its from at word words "
    "meaning means used refers refer describe describes something someone thing way which who "
    "not no can may often usually one term phrase".split()
)


def content_words(text: str) -> set[str]:
    """Lower-cased content words of an explanation (stop words and filler dropped)."""
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1}


def _floored(values: Tensor, sweep: SweepScores) -> Tensor:
    """Min-max over the grid, then scales under min_scale get the minimum (as in the composite)."""
    scored = minmax(values[None, :])[0]
    below = sweep.scales < sweep.min_scale
    if below.any() and not below.all():
        scored = torch.where(below, scored[~below].min(), scored)
    return scored


def rank_composite(indices: list[int], texts: list[str], sweep: SweepScores,
                   roundtrip: Sequence[float] | None = None) -> Ranked:
    """The post's selection: the composite at each sample's (nearest) metric scale."""
    scores = [float(sweep.composite[i]) for i in indices]
    return Ranked(scores, [{} for _ in indices])


def rank_selfsim(indices: list[int], texts: list[str], sweep: SweepScores,
                 roundtrip: Sequence[float] | None = None) -> Ranked:
    """Self-similarity alone (min-max, min-scale floor)."""
    scored = _floored(sweep.selfsim, sweep)
    return Ranked([float(scored[i]) for i in indices], [{} for _ in indices])


def rank_entropy(indices: list[int], texts: list[str], sweep: SweepScores,
                 roundtrip: Sequence[float] | None = None) -> Ranked:
    """Entropy alone: lower first-token entropy ranks higher (min-max, min-scale floor)."""
    scored = _floored(-sweep.entropy, sweep)
    return Ranked([float(scored[i]) for i in indices], [{} for _ in indices])


def rank_consensus(indices: list[int], texts: list[str], sweep: SweepScores,
                   roundtrip: Sequence[float] | None = None, weight: float = 5.0) -> Ranked:
    """Composite plus cross-scale agreement (the round trip's tie-break).

    A feature's meaning recurs across scales, while the failure modes (filler about "a word",
    gibberish at large scales) vary from one scale to the next. `agreement` is the fraction of the
    *other* sampled scales at which some sample shares a content word with this one, in [0, 1];
    counting scales rather than samples keeps two samples at one scale from voting twice. With
    the default weight agreement dominates and the composite breaks ties. On 40 DEV planted words
    (16 samples each) this put the word in the top 3 for 52% vs 30% for the composite alone.
    """
    words = [content_words(t) for t in texts]
    scales_with: dict[str, set[int]] = {}
    for grid_index, ws in zip(indices, words):
        for word in ws:
            scales_with.setdefault(word, set()).add(grid_index)
    other_scales = max(len(set(indices)) - 1, 1)
    base = rank_composite(indices, texts, sweep).score
    scores: list[float] = []
    extras: list[dict[str, float]] = []
    for i, (grid_index, ws) in enumerate(zip(indices, words)):
        support = max((len(scales_with[w] - {grid_index}) for w in ws), default=0) / other_scales
        scores.append(base[i] + weight * support)
        extras.append({"agreement": support})
    return Ranked(scores, extras)


def rank_roundtrip(indices: list[int], texts: list[str], sweep: SweepScores,
                   roundtrip: Sequence[float] | None = None, weight: float = 10.0,
                   consensus_weight: float = 5.0) -> Ranked:
    """Round trip first, consensus as tie-break: `weight` x roundtrip + the consensus score.

    `roundtrip` (one per candidate, from `selfexplain.roundtrip`) is how closely the model's own
    reading of the explanation lands on the injected direction, a cosine in [-1, 1]; the consensus
    score lies in [-1, 0.4 + consensus_weight]. Unlike the scale metrics it looks at the answer
    itself, which is what separates a right sample from a wrong one at the same scale.
    """
    if roundtrip is None or len(roundtrip) != len(texts):
        raise ValueError("the roundtrip strategy needs one round-trip score per candidate")
    base = rank_consensus(indices, texts, sweep, weight=consensus_weight)
    scores = [b + weight * r for b, r in zip(base.score, roundtrip)]
    return Ranked(scores, base.extra)


STRATEGIES = {
    "composite": rank_composite,
    "selfsim": rank_selfsim,
    "entropy": rank_entropy,
    "consensus": rank_consensus,
    "roundtrip": rank_roundtrip,
}


def order(scores: list[float]) -> list[int]:
    """Candidate indices best first; ties keep sampling order (stable)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))
