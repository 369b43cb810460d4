"""Matching SAE features across versions: exact on planted shared directions, blocked = unblocked,
dead rows match nothing; carried label rows keep their provenance; label agreement."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
import torch

from selfexplain.carryover import (
    CARRIED_PREFIX,
    best_sources,
    carried_labels,
    labels_agree,
    load_decoder,
    match_features,
    save_decoder,
)
from selfexplain.errors import InputError


def versions(n_old=40, n_shared=25, n_new=15, d=24, noise=0.05, seed=0):
    """An old decoder and a new one holding `n_shared` of its rows (rescaled, slightly perturbed,
    shuffled) plus `n_new` fresh random rows. Returns (old, new, {new feature: old feature})."""
    g = torch.Generator().manual_seed(seed)
    old = torch.randn(n_old, d, generator=g)
    kept = torch.randperm(n_old, generator=g)[:n_shared]
    shared = old[kept] * torch.rand(n_shared, 1, generator=g).add(0.5)
    shared = shared + noise * shared.norm(dim=1, keepdim=True) / d ** 0.5 * torch.randn(
        n_shared, d, generator=g)
    rows = torch.cat([shared, torch.randn(n_new, d, generator=g)])
    order = torch.randperm(len(rows), generator=g)
    new = rows[order]
    truth = {int(pos): int(kept[int(src)]) for pos, src in enumerate(order) if src < n_shared}
    return old, new, truth


def test_shared_directions_are_matched_exactly_and_the_rest_is_new_or_vanished():
    old, new, truth = versions()
    matches = match_features(new, old, threshold=0.9, k=3)
    table = matches.frame()
    found = {r["feature"]: r["source_feature"] for r in table.filter(pl.col("matched")).to_dicts()}
    assert found == truth
    assert matches.summary() == {"matched": 25, "new": 15, "vanished": 15}
    assert table.height == new.shape[0] * 3
    ranked = table.filter(pl.col("feature") == next(iter(truth)))
    assert ranked["rank"].to_list() == [1, 2, 3]
    assert ranked["cosine"].to_list() == sorted(ranked["cosine"].to_list(), reverse=True)
    assert not table.filter(pl.col("rank") > 1)["mutual"].any()


def test_blocked_matching_equals_one_block_and_threshold_is_a_cosine():
    old, new, _ = versions(seed=1)
    one = match_features(new, old, threshold=0.5, block=4096)
    blocked = match_features(new, old, threshold=0.5, block=3)
    assert torch.equal(one.source, blocked.source) and torch.allclose(one.cosine, blocked.cosine)
    strict = match_features(new, old, threshold=0.9999)
    assert strict.summary()["matched"] == 0  # the shared rows were perturbed
    with pytest.raises(InputError, match="must be in"):
        match_features(new, old, threshold=1.5)
    with pytest.raises(InputError, match="same residual width"):
        match_features(new, old[:, :10])


def test_zero_and_nan_rows_match_nothing():
    old, new, truth = versions(seed=2)
    f = next(iter(truth))
    new[f] = 0.0
    old[truth[next(iter(list(truth)[1:]))]] = float("nan")
    matches = match_features(new, old, threshold=0.9)
    assert not bool(matches.matched[f]) and not bool(matches.mutual[f])
    assert matches.summary()["matched"] == len(truth) - 2


def source_labels(features, sae_id="v1", run_id="run-1"):
    at = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    return pl.DataFrame([dict(
        release="r", sae_id=sae_id, feature=f, run_id=run_id, label=f"label {f}",
        top_labels=[f"label {f}"], recovered_token=f"t{f}", recovered_reliable=True, scale=1.0,
        composite=0.5, score=0.5, max_selfsim=0.3, max_selfsim_repeat=0.2, max_roundtrip=0.6,
        failed=False, failure_reason=None, model_id="m", model_revision="x", preset="default",
        settings_hash="h", labelled_at=at) for f in features])


def test_carried_labels_keep_provenance_and_leave_fresh_labels_alone():
    matches = pl.DataFrame({
        "feature": [0, 0, 1, 2, 3], "source_release": ["r", "r", "r", "r", "r"],
        "source_sae_id": ["v1", "v0", "v1", "v1", "v1"], "source_feature": [7, 9, 8, 5, 6],
        "cosine": [0.95, 0.97, 0.92, 0.99, 0.5], "rank": [1, 1, 1, 1, 1],
        "matched": [True, True, True, True, False]})
    best = best_sources(matches)
    assert best.rows() == [(0, "r", "v0", 9, 0.97), (1, "r", "v1", 8, 0.92),
                           (2, "r", "v1", 5, 0.99)]
    labels = carried_labels(best, pl.concat([source_labels([5, 8]), source_labels([9], "v0")]),
                            release="r", sae_id="v2", keep_fresh={2})
    assert labels["feature"].to_list() == [0, 1]
    first = labels.row(0, named=True)
    assert first["label"] == "label 9" and first["carried_from_sae_id"] == "v0"
    assert first["carried_from_feature"] == 9 and first["carried_cosine"] == 0.97
    assert first["run_id"] == CARRIED_PREFIX + "run-1" and first["sae_id"] == "v2"


def test_labels_agree_on_text_token_or_similarity():
    agree = labels_agree(["Both", "cat", "dog", "x", None], ["both.", "feline", "car", "y", "z"],
                         ["b", "c", "d", "tok", None], ["a", "e", "f", " Tok", None],
                         [0.1, 0.7, 0.2, 0.0, None], threshold=0.6)
    assert agree == [True, True, False, True, None]


def test_stored_decoders_round_trip_and_refuse_another_sae(tmp_path):
    decoder = torch.randn(6, 4) * 3
    path = save_decoder(tmp_path, "r", "v1", decoder)
    stored = load_decoder(tmp_path, "r", "v1")
    assert stored.shape == (6, 4)
    assert torch.allclose(stored, decoder / decoder.norm(dim=1, keepdim=True), atol=1e-3)
    assert load_decoder(tmp_path, "r", "v2") is None
    from safetensors.torch import save_file  # a foreign file where v1's would be: refused

    save_file({"unit_decoder": decoder.half()}, str(path), metadata={"release": "r", "sae_id": "x"})
    assert load_decoder(tmp_path, "r", "v1") is None
