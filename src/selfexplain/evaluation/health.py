"""SAE health from its feature statistics: what the card reports besides variance explained.

- dead / dense latents: density 0 on the held-out text / density above `DENSE`.
- alignment: for single-token features, the cosine between the decoder row and the top token's
  mean-free residual direction (`feature_stats.token_alignment`): median and quartiles.
- interpretable-looking latents: the fraction whose top contexts share one clear token (the
  single-token rule) or one theme. A theme is measured without a judge: the mean pairwise MiniLM
  similarity of the latent's top contexts (their firing windows) against the same statistic for as
  many contexts drawn at random from all latents; a latent has a theme when it beats the null's
  95th percentile.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

import polars as pl
import torch
from torch import Tensor

DENSE = 0.1
"""A latent active on more than this fraction of held-out tokens counts as dense."""
N_CONTEXTS = 10
_MARK = re.compile(r"[«»]")


def _coherence(embeddings: Tensor) -> float:
    """Mean pairwise cosine of unit rows (n, dim), n >= 2."""
    n = embeddings.shape[0]
    sims = embeddings @ embeddings.T
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


def theme_scores(stats: pl.DataFrame, embedder: Callable[[Sequence[str]], Tensor], *,
                 seed: int = 0, null_draws: int = 500) -> tuple[dict[int, float], list[float]]:
    """({feature: coherence of its top contexts}, null coherences of random context sets)."""
    live = stats.filter(pl.col("top_contexts").list.len() >= 2)
    texts: list[str] = []
    owner: list[int] = []
    for feature, contexts in zip(live["feature"].to_list(), live["top_contexts"].to_list(),
                                 strict=True):
        for item in contexts[:N_CONTEXTS]:
            texts.append(_MARK.sub("", item["text"]))
            owner.append(feature)
    if not texts:
        return {}, []
    embedded = embedder(texts)  # (n_texts, dim)
    rows: dict[int, list[int]] = {}
    for i, feature in enumerate(owner):
        rows.setdefault(feature, []).append(i)
    scores = {f: _coherence(embedded[idx]) for f, idx in rows.items()}
    rng = random.Random(seed)
    null = [_coherence(embedded[rng.sample(range(len(texts)), min(N_CONTEXTS, len(texts)))])
            for _ in range(null_draws)] if len(texts) >= 2 else []
    return scores, null


def health(stats: pl.DataFrame, embedder: Callable[[Sequence[str]], Tensor] | None = None,
           *, seed: int = 0) -> dict[str, float | int | None]:
    """The card's health numbers from a feature-statistics frame (see the module doc)."""
    n = stats.height
    density = stats["density"]
    alive = stats.filter(pl.col("density") > 0)
    single = alive.filter(pl.col("single_token"))
    out: dict[str, float | int | None] = {
        "latents": n,
        "dead_fraction": float((density == 0).mean()),
        "dense_fraction": float((density > DENSE).mean()),
        "single_token_fraction": single.height / max(1, alive.height),
    }
    if "token_alignment" in stats.columns:
        aligned = stats["token_alignment"].drop_nulls()
        if len(aligned):
            q = torch.quantile(torch.tensor(aligned.to_list()), torch.tensor([0.25, 0.5, 0.75]))
            out.update(alignment_n=len(aligned), alignment_q1=float(q[0]),
                       alignment_median=float(q[1]), alignment_q3=float(q[2]))
    if embedder is not None:
        scores, null = theme_scores(alive, embedder, seed=seed)
        if null:
            cut = float(torch.quantile(torch.tensor(null), 0.95))
            themed = {f for f, s in scores.items() if s > cut}
            clear = themed | set(single["feature"].to_list())
            out.update(theme_null_p95=cut, theme_fraction=len(themed) / max(1, alive.height),
                       token_or_theme_fraction=len(clear) / max(1, alive.height))
    return out
