"""SAE health numbers on a hand-made statistics frame with known answers."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from selfexplain.evaluation.health import health


def _contexts(words):
    return [{"text": f"a «{w}» b", "activation": 1.0} for w in words]


def stats_frame() -> pl.DataFrame:
    return pl.DataFrame({
        "feature": [0, 1, 2, 3],
        "density": [0.0, 0.5, 0.01, 0.02],
        "single_token": [False, False, True, False],
        "token_alignment": [None, None, 0.8, None],
        "top_contexts": [[], _contexts(["x", "y", "z"]), _contexts(["dog", "dog", "dog"]),
                         _contexts(["cat", "kitten", "cats"])],
    })


def fake_embedder(texts):
    """Animals point one way, everything else at random: feature 3 has a theme, 1 does not."""
    gen = torch.Generator().manual_seed(0)
    rows = []
    for text in texts:
        if any(w in text for w in ("cat", "kitten", "dog")):
            rows.append(torch.tensor([1.0, 0.0, 0.0, 0.0]) + 0.01 * torch.randn(4, generator=gen))
        else:
            rows.append(torch.randn(4, generator=gen))
    return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


def test_health_counts_dead_dense_single_and_alignment():
    numbers = health(stats_frame())
    assert numbers["dead_fraction"] == 0.25 and numbers["dense_fraction"] == 0.25
    assert numbers["single_token_fraction"] == pytest.approx(1 / 3)
    assert numbers["alignment_n"] == 1 and numbers["alignment_median"] == pytest.approx(0.8)


def test_theme_check_finds_the_coherent_latent():
    numbers = health(stats_frame(), fake_embedder)
    # feature 2 (single token) and 3 (animals) are clear, 1 (random words) is not
    assert numbers["token_or_theme_fraction"] == pytest.approx(2 / 3)
