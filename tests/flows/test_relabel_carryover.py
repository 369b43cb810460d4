"""Carry-over end to end on two tiny SAE versions with known shared directions: the matches are
found exactly, labels carried with provenance, relabel skips them (or labels them last), a rerun
is idempotent, and `selfexplain diff` reports the same counts."""

from __future__ import annotations

import json

import polars as pl
import torch

import tasks.explain
from flows.relabel import relabel
from cli.cli import main
from selfexplain.warehouse import Warehouse
from selfexplain.warehouse_read import open_reader
from tasks.request import RelabelRequest
from tests.conftest import write_sae_folder

TABLES = ["label", "label_current", "feature_match", "explanation", "shard_done", "run"]


def counts(path) -> dict[str, int]:
    with Warehouse(path) as wh:
        return {t: wh.query(f"SELECT count(*) AS n FROM {t}")["n"][0] for t in TABLES}


def two_versions(tmp_path, d_model):
    """v1: 16 random rows. v2: 10 of them (rescaled, shuffled: v2 feature i = v1 feature
    truth[i]) and 6 new ones."""
    g = torch.Generator().manual_seed(3)
    v1 = torch.randn(16, d_model, generator=g)
    kept = [11, 2, 7, 0, 15, 9, 4, 13, 5, 8]
    v2 = torch.randn(16, d_model, generator=g)
    positions = [1, 3, 4, 6, 7, 9, 10, 12, 14, 15]
    truth = {}
    for pos, src in zip(positions, kept):
        v2[pos] = 2.0 * v1[src]
        truth[pos] = src
    return (write_sae_folder(tmp_path / "v1", d_model, 16, decoder=v1),
            write_sae_folder(tmp_path / "v2", d_model, 16, decoder=v2), truth)


def test_carry_over_matches_carries_skips_and_reruns_idempotently(
        tmp_path, tiny_model_dir, tiny_lm, fast, monkeypatch, capsys):
    v1, v2, truth = two_versions(tmp_path, tiny_lm.d_model)
    warehouse = str(tmp_path / "w.duckdb")
    common = dict(collect=False, model=tiny_model_dir, features="0-15", shard_size=8, scales="0:2:3",
                  samples=1, overrides=fast, warehouse=warehouse)
    relabel(RelabelRequest(sae=str(v1), **common))

    real = tasks.explain.explain_features
    calls: list[list[int]] = []
    monkeypatch.setattr(tasks.explain, "explain_features",
                        lambda request, sae, features, **kw: calls.append(list(features))
                        or real(request, sae, features, **kw))
    request = RelabelRequest(sae=str(v2), carry_over=True, **common)
    summary = relabel(request)
    unmatched = sorted(set(range(16)) - set(truth))
    assert sorted(f for shard in calls for f in shard) == unmatched  # matched ones skipped
    assert summary["carry_over"]["matched"] == sorted(truth)
    assert summary["carry_over"]["sources"][0]["vanished"] == 6

    with open_reader(warehouse) as wh:
        view = wh.query("SELECT feature, label, provisional, carried_from_sae_id, "
                        "carried_from_feature, carried_cosine FROM v_feature_labels "
                        "WHERE sae_id = 'v2' ORDER BY feature")
        old = dict(wh.query("SELECT feature, label FROM v_feature_labels WHERE sae_id = 'v1'")
                   .iter_rows())
        matches = wh.query("SELECT feature, source_feature FROM feature_match "
                           "WHERE sae_id = 'v2' AND matched")
        statuses = wh.query("SELECT DISTINCT status FROM v_label_changes WHERE sae_id = 'v2'")
    assert view.height == 16
    carried = view.filter(view["provisional"])
    assert dict(zip(carried["feature"], carried["carried_from_feature"])) == truth
    assert all(row["label"] == old[row["carried_from_feature"]]
               for row in carried.iter_rows(named=True))
    assert set(carried["carried_from_sae_id"]) == {"v1"}
    assert min(carried["carried_cosine"]) > 0.999
    assert dict(matches.iter_rows()) == truth
    assert set(statuses["status"]) <= {"carried", "unlabelled"}
    assert view.filter(~view["provisional"])["feature"].to_list() == unmatched

    before = counts(warehouse)
    calls.clear()
    again = relabel(request)
    assert calls == [] and again["n_shards"] == 0
    assert counts(warehouse) == before

    # relabel the matched ones afresh: the unmatched are stored, so only the matched run now
    relabel(RelabelRequest(sae=str(v2), carry_over=True, matched="relabel", **common))
    assert sorted(f for shard in calls for f in shard) == sorted(truth)
    with open_reader(warehouse) as wh:
        provisional = wh.query("SELECT count(*) FILTER (WHERE provisional) AS n "
                               "FROM v_feature_labels WHERE sae_id = 'v2'")["n"][0]
        changes = wh.query("SELECT status, count(*) AS n FROM v_label_changes "
                           "WHERE sae_id = 'v2' GROUP BY status")
        history = wh.query("SELECT count(*) AS n FROM label WHERE sae_id = 'v2'")["n"][0]
    assert provisional == 0
    # the tiny model's labels are noise (and may be empty): only that none is still carried
    assert changes["n"].sum() == len(truth)
    assert set(changes["status"]) <= {"same", "changed", "unlabelled"}
    assert history == 16 + len(truth)  # the carried rows stay as history

    capsys.readouterr()
    assert main(["diff", str(v1), str(v2), "--warehouse", warehouse, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["matched"], out["new"], out["vanished"]) == (10, 6, 6)
    assert out["fresh_pairs"] == 10


def test_carried_labels_are_scored_on_the_new_saes_held_out_text(tmp_path, tiny_model_dir,
                                                                  tiny_lm, fast):
    """v2 has statistics (collected from a small corpus): the labels carried over from v1 get
    held-out detection scores on v2's own examples; v1's labels (no statistics) get none."""
    from tests.unit.test_collect import make_corpus, sparsify

    v1, v2, truth = two_versions(tmp_path, tiny_lm.d_model)
    sparsify(v2, tiny_lm, silent=0.97)  # held-out examples (32 tokens) where each is silent
    warehouse = str(tmp_path / "w.duckdb")
    common = dict(model=tiny_model_dir, features="0-15", shard_size=8, scales="0:2:3",
                  samples=1, overrides=fast, warehouse=warehouse)
    relabel(RelabelRequest(sae=str(v1), collect=False, **common))
    relabel(RelabelRequest(sae=str(v2), carry_over=True, corpus=str(make_corpus(
        tmp_path / "corpus")), collect_tokens=1500, **common))
    with open_reader(warehouse) as wh:
        rows = wh.query("SELECT feature, provisional, label, detection_auroc, detection_auroc_hard "
                        "FROM v_feature_labels WHERE sae_id = 'v2' ORDER BY feature")
        v1_scores = wh.query("SELECT count(*) AS n FROM label_score WHERE sae_id = 'v1'")["n"][0]
        by_run = wh.query("SELECT count(*) AS n, count(DISTINCT (feature, run_id)) AS k "
                          "FROM label_score WHERE sae_id = 'v2'")
        scored = wh.query("SELECT s.feature, s.detection_auroc, s.n_activating, s.n_random, "
                          "l.provisional FROM label_score AS s JOIN v_feature_labels AS l "
                          "USING (release, sae_id, feature, run_id) WHERE s.sae_id = 'v2' "
                          "AND l.label IS NOT NULL")
    carried = rows.filter(rows["provisional"] & rows["label"].is_not_null())
    assert sorted(carried["feature"].to_list()) == sorted(
        f for f in truth if rows.filter(rows["feature"] == f)["label"][0])
    fresh = rows.filter(~rows["provisional"] & rows["label"].is_not_null())
    assert carried.height and fresh.height
    # every current label, carried or fresh, has its score row on v2's own examples ...
    assert sorted(scored["feature"].to_list()) == sorted(carried["feature"].to_list()
                                                          + fresh["feature"].to_list())
    assert scored.filter(pl.col("provisional")).height == carried.height
    # ... with an AUROC wherever both sides have examples
    both = scored.filter((pl.col("n_activating") > 0) & (pl.col("n_random") > 0))
    assert both.height >= carried.height // 2 and both["detection_auroc"].is_not_null().all()
    assert v1_scores == 0
    assert by_run["n"][0] == by_run["k"][0]  # one score per label, stored once


def test_the_better_scored_of_two_labels_is_current(tmp_path, tiny_model_dir, tiny_lm, fast):
    """Carried labels, then fresh ones for the same matched features (--matched relabel): where a
    feature has both scored, the one that detects better on held-out text is current; both stay
    in the history."""
    from tests.unit.test_collect import make_corpus, sparsify

    v1, v2, truth = two_versions(tmp_path, tiny_lm.d_model)
    sparsify(v2, tiny_lm, silent=0.97)
    warehouse = str(tmp_path / "w.duckdb")
    common = dict(model=tiny_model_dir, features="0-15", shard_size=8, scales="0:2:3",
                  samples=1, overrides=fast, warehouse=warehouse,
                  corpus=str(make_corpus(tmp_path / "corpus")), collect_tokens=1500)
    relabel(RelabelRequest(sae=str(v1), collect=False, **common))
    relabel(RelabelRequest(sae=str(v2), carry_over=True, matched="relabel", **common))
    with open_reader(warehouse) as wh:
        scored = wh.query(
            "SELECT l.feature, l.run_id, l.labelled_at, s.detection_auroc FROM label AS l "
            "JOIN label_score AS s USING (release, sae_id, feature, run_id) "
            "WHERE l.sae_id = 'v2' AND s.detection_auroc IS NOT NULL AND l.label IS NOT NULL")
        current = dict(wh.query("SELECT feature, run_id FROM label_current WHERE sae_id = 'v2'")
                       .iter_rows())
        history = wh.query("SELECT feature, count(*) AS n FROM label WHERE sae_id = 'v2' "
                           "GROUP BY feature")
    twice = scored.group_by("feature").agg(pl.len().alias("n")).filter(pl.col("n") >= 2)
    assert twice.height >= 3  # matched features: a carried and a fresh scored label each
    kept_older = 0
    for feature in twice["feature"].to_list():
        rows = scored.filter(pl.col("feature") == feature).sort(
            ["detection_auroc", "labelled_at", "run_id"], descending=True)
        assert current[feature] == rows["run_id"][0], feature
        kept_older += rows["labelled_at"][0] < rows["labelled_at"].max()
    assert kept_older >= 1  # the latest label did not simply win: the score decided
    assert history.filter(pl.col("feature").is_in(twice["feature"]))["n"].min() >= 2
