"""Upserting the same rows twice leaves the same rows; duplicates in one batch are resolved."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from selfexplain.errors import WarehouseError
from selfexplain.warehouse_rows import SCHEMAS, feature_rows, frame

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def sample_rows(make_results) -> dict[str, pl.DataFrame]:
    """Hand-written rows for every table that has an upsert file."""
    results, skipped = make_results()
    rows = feature_rows(results, skipped, release="r", sae_id="s", run_id="run1", model_id="m",
                        model_revision="rev", preset="default", settings_hash="h",
                        labelled_at=T0)
    rows["run"] = frame("run", [dict(
        run_id="run1", request_hash="q", model="default", release="r", sae_id="s",
        preset="default", settings_hash="h", config_json="{}", features="0-3", n_features=4,
        shard_size=2, status="completed", started_at=T0, finished_at=T0,
    )])
    rows["shard_done"] = frame("shard_done", [dict(
        request_hash="q", shard_key="0-3-abc", run_id="run1", release="r", sae_id="s",
        features=[0, 1, 2, 3], n_features=4, n_labelled=3, n_failed=2, n_skipped=1,
        seconds=1.0, done_at=T0,
    )])
    rows["sae"] = frame("sae", [dict(release="r", sae_id="s", source="local", d_sae=16,
                                     first_seen=T0, last_seen=T0)])
    rows["sae_change"] = frame("sae_change", [dict(release="r", sae_id="s", change="added",
                                                   source="inbox", observed_at=T0, matched=True)])
    rows["registry_snapshot"] = frame("registry_snapshot", [dict(
        snapshot_sha="abc", sae_lens_version="6", n_releases=1, n_saes=1, first_seen=T0,
        last_seen=T0)])
    rows["registry_entry"] = frame("registry_entry", [dict(snapshot_sha="abc", release="r",
                                                           sae_id="s", model_id="gpt2")])
    rows["reference_label"] = frame("reference_label", [dict(
        source="neuronpedia", release="r", sae_id="s", feature=0, description="cats",
        imported_at=T0)])
    rows["eval_result"] = pl.DataFrame({
        "eval_id": ["e"], "suite": ["planted"], "release": ["planted"], "sae_id": ["words"],
        "feature": [0], "method": ["selfexplain"], "metric": ["hit_top3"], "value": [1.0],
        "name": ["cat"], "detail_json": [None], "model_id": ["m"], "settings_hash": ["h"],
        "run_id": [None], "created_at": [T0],
    })
    rows["layer_threshold"] = pl.DataFrame({
        "model_id": ["m"], "model_revision": ["rev"], "layer": [3], "settings_hash": ["h"],
        "prompt": ["meaning"], "threshold": [0.02], "quantile": [0.95], "n_null": [64],
        "null_mean": [0.01], "null_std": [0.004], "created": [None], "computed_at": [T0],
    })
    rows["judge_response"] = pl.DataFrame({
        "key": ["0" * 64], "model": ["judge"],
        "messages_json": ['[{"content": "?", "role": "user"}]'], "response": ["Yes"],
        "created_at": [T0],
    })
    rows["feature_stats"] = pl.DataFrame({
        "release": ["r"], "sae_id": ["s"], "feature": [0], "density": [0.01],
        "mean_activation": [2.0], "max_activation": [5.0], "top_tokens": [["cat"]],
        "top_token_share": [0.9], "single_token": [True], "vocabproj_tokens": [["cat"]],
        "top_contexts": [[{"text": "a «cat»", "activation": 5.0}]], "token_alignment": [0.7],
        "computed_at": [T0],
    })
    rows["feature_match"] = frame("feature_match", [dict(
        release="r", sae_id="s2", feature=0, source_release="r", source_sae_id="s", rank=1,
        source_feature=3, cosine=0.97, mutual=True, matched=True, threshold=0.9, matched_at=T0)])
    rows["label_score"] = frame("label_score", [dict(
        release="r", sae_id="s", feature=0, run_id="run-1", scorer="embedding", label="cat",
        detection_auroc=0.91, detection_auroc_hard=0.74, n_activating=64, n_random=64, n_hard=60,
        stats_dir="/stats", scored_at=T0)])
    return rows


def snapshot(wh, tables) -> dict[str, pl.DataFrame]:
    return {t: wh.table(t).sort(wh.primary_key(t)) for t in tables}


def test_every_upsert_file_is_exercised(wh, make_results):
    from selfexplain.warehouse import default_sql_dir

    files = {p.stem for p in (default_sql_dir() / "upserts").glob("*.sql")}
    assert files <= set(sample_rows(make_results)), files - set(sample_rows(make_results))


def test_upsert_twice_gives_the_same_rows(wh, make_results):
    rows = sample_rows(make_results)
    wh.write(rows)
    first = snapshot(wh, rows)
    counts = wh.write(rows)
    second = snapshot(wh, rows)
    for table in rows:
        assert first[table].height > 0, table
        assert first[table].equals(second[table]), table
    assert counts["label"] == 4


def test_duplicate_keys_in_one_batch_keep_the_last_row(wh):
    rows = frame("reference_label", [
        dict(source="np", release="r", sae_id="s", feature=1, description="first", imported_at=T0),
        dict(source="np", release="r", sae_id="s", feature=1, description="last", imported_at=T0),
    ])
    assert wh.upsert("reference_label", rows) == 1
    assert wh.table("reference_label")["description"].to_list() == ["last"]


def test_failed_batch_writes_nothing(wh, make_results):
    rows = sample_rows(make_results)
    bad = rows["label"].with_columns(pl.lit(None, dtype=pl.String).alias("run_id"))
    with pytest.raises(WarehouseError):
        wh.write({"sae": rows["sae"], "label": bad})
    assert wh.table("sae").height == 0


def test_unknown_table_is_refused(wh):
    with pytest.raises(WarehouseError, match="no upsert"):
        wh.upsert("nope; DROP TABLE label", pl.DataFrame({"a": [1]}))


def test_frame_schemas_match_tables(wh):
    for table, schema in SCHEMAS.items():
        assert list(schema) == wh.query(f"SELECT * FROM {table} LIMIT 0").columns, table
