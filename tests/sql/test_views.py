"""The public views on hand-written rows: one current label per feature, history kept; evaluation
summaries (counts, means, Wilson intervals) equal to the Python statistics."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from selfexplain.evaluation.stats import wilson
from selfexplain.warehouse_rows import feature_rows, frame

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
T1 = T0 + dt.timedelta(hours=1)
CONTRACT = ["release", "sae_id", "feature", "label", "recovered_token", "scale", "composite",
            "max_selfsim", "failed", "failure_reason", "run_id", "labelled_at"]


def rows(run_id, at, results, skipped=()):
    return feature_rows(results, list(skipped), release="r", sae_id="s", run_id=run_id,
                        model_id="m", model_revision="rev", preset="default",
                        settings_hash="h", labelled_at=at)


def test_feature_labels_contract_and_history(wh, make_feature, make_results):
    results, skipped = make_results()
    wh.write(rows("run1", T0, results, skipped))
    view = wh.query("SELECT * FROM v_feature_labels ORDER BY feature")
    assert view.columns[: len(CONTRACT)] == CONTRACT
    assert view["feature"].to_list() == [0, 1, 2, 3]
    assert view["label"].to_list() == ["a word 0", "a word 1", "a word 2", None]
    assert view["failed"].to_list() == [False, False, True, True]
    assert view["scale"].to_list()[:3] == [20.0, 20.0, 20.0]

    # A later run relabels feature 1: it becomes current, the old label stays in history.
    wh.write(rows("run2", T1, [make_feature(1, label="cats")]))
    view = wh.query("SELECT feature, label, run_id FROM v_feature_labels ORDER BY feature")
    assert view.height == 4
    assert view.row(1) == (1, "cats 1", "run2")
    assert wh.query("SELECT count(*) AS n FROM label WHERE feature = 1")["n"][0] == 2

    # Replaying the older run (e.g. a late merge) does not demote the newer label.
    wh.write(rows("run1", T0, results, skipped))
    assert wh.query("SELECT run_id FROM v_feature_labels WHERE feature = 1")["run_id"][0] == "run2"


def test_failures_sweep_and_explanations(wh, make_feature, make_results):
    results, skipped = make_results()
    wh.write(rows("run1", T0, results, skipped))
    failures = wh.query("SELECT feature, kind FROM v_failures ORDER BY feature")
    assert failures.rows() == [(2, "failed"), (3, "skipped")]
    sweep = wh.query("SELECT * FROM v_scale_sweep WHERE feature = 0 AND prompt = 'meaning' "
                     "ORDER BY scale")
    assert sweep["scale"].to_list() == [0.0, 10.0, 20.0, 30.0]
    assert sweep["is_current"].all()
    chosen = wh.query("SELECT text FROM v_explanations WHERE feature = 0 AND chosen "
                      "AND prompt = 'meaning'")
    assert chosen["text"].to_list() == ["a word 0"]
    scores = wh.query("SELECT rank, roundtrip, agreement, peak_token FROM v_explanations "
                      "WHERE feature = 0 AND prompt = 'meaning' ORDER BY rank")
    assert scores.rows() == [(0, 0.75, 0.5, " word"), (1, None, None, None)]  # absent: NULL
    assert wh.query("SELECT max_roundtrip FROM v_failures WHERE feature = 2").item() == 0.75


def test_runs_and_saes(wh, make_feature, make_results):
    results, skipped = make_results()
    wh.write(rows("run1", T0, results, skipped))
    wh.write({
        "run": frame("run", [dict(
            run_id="run1", request_hash="q", model="default", release="r", sae_id="s",
            preset="default", settings_hash="h", config_json="{}", features="0-3",
            n_features=4, shard_size=4, status="running", started_at=T0)]),
        "shard_done": frame("shard_done", [dict(
            request_hash="q", shard_key="k", run_id="run1", release="r", sae_id="s",
            features=[0, 1, 2, 3], n_features=4, n_labelled=3, n_failed=2, n_skipped=1,
            done_at=T0 + dt.timedelta(seconds=30))]),
        "sae": frame("sae", [
            dict(release="r", sae_id="s", source="local", first_seen=T0, last_seen=T0),
            dict(release="r", sae_id="gone", source="registry", first_seen=T0, last_seen=T0,
                 removed_at=T1),
        ]),
    })
    run = wh.query("SELECT status, shards_stored, features_stored, seconds FROM v_runs")
    assert run.row(0) == ("running", 1, 4, 30.0)
    saes = wh.query("SELECT sae_id, removed, n_labelled, n_failed FROM v_saes ORDER BY sae_id")
    assert saes.rows() == [("gone", True, 0, 0), ("s", False, 3, 2)]


def test_feature_labels_carry_feature_stats(wh, make_results):
    results, skipped = make_results()
    wh.write(rows("run1", T0, results, skipped))
    wh.execute("INSERT INTO feature_stats (release, sae_id, feature, density, mean_activation, "
               "max_activation, top_tokens, top_token_share, single_token, vocabproj_tokens, "
               "top_contexts, token_alignment, computed_at) VALUES ('r', 's', 1, 0.01, 2.0, 5.0, "
               "['cat'], 0.9, true, ['cat'], [{'text': 'a «cat»', 'activation': 5.0}], 0.75, ?)",
               [T0])
    view = wh.query("SELECT feature, single_token, top_tokens, token_alignment "
                    "FROM v_feature_labels WHERE feature IN (0, 1) ORDER BY feature")
    assert view.rows() == [(0, None, None, None), (1, True, ["cat"], 0.75)]


def eval_rows(eval_id, at, metric, values, *, method="default", suite="planted", sae_id="words"):
    """Hand-written eval_result rows, one per value (features 0, 1, ...)."""
    n = len(values)
    return pl.DataFrame({
        "eval_id": [eval_id] * n, "suite": [suite] * n, "release": ["planted"] * n,
        "sae_id": [sae_id] * n, "feature": list(range(n)), "method": [method] * n,
        "metric": [metric] * n, "value": values, "name": [None] * n, "detail_json": [None] * n,
        "model_id": ["m"] * n, "settings_hash": ["h"] * n, "run_id": [None] * n,
        "created_at": [at] * n,
    }, schema_overrides={"value": pl.Float64, "name": pl.String, "detail_json": pl.String,
                         "run_id": pl.String})


def test_eval_summary_counts_means_and_wilson_intervals(wh):
    nan = float("nan")
    wh.write({"eval_result": pl.concat([
        eval_rows("e1", T0, "hit_top3", [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, None, nan]),
        eval_rows("e1", T0, "failed", [1.0] * 5),
        eval_rows("e1", T0, "recovered_exact", [0.0] * 3),
        eval_rows("e1", T0, "max_selfsim", [0.5, 1.0, 0.0]),
        eval_rows("e1", T0, "best_scale", [None]),
        eval_rows("e1", T0, "hit_top3", [1.0], method="vocabproj"),
    ])})
    view = wh.query("SELECT metric, method, n, mean, ci_low, ci_high, model_id, settings_hash, "
                    "created_at, is_latest FROM v_eval_summary ORDER BY metric, method")
    got = {(r["metric"], r["method"]): r for r in view.iter_rows(named=True)}
    assert len(got) == view.height == 6  # one row per (eval, suite, release, sae, method, metric)
    for (metric, method), (k, n) in {("hit_top3", "default"): (4, 7), ("failed", "default"): (5, 5),
                                     ("recovered_exact", "default"): (0, 3),
                                     ("hit_top3", "vocabproj"): (1, 1)}.items():
        row = got[(metric, method)]
        low, high = wilson(k, n)
        assert row["n"] == n and row["mean"] == pytest.approx(k / n)
        assert row["ci_low"] == pytest.approx(low, abs=1e-12), metric
        assert row["ci_high"] == pytest.approx(high, abs=1e-12), metric
    other = got[("max_selfsim", "default")]
    assert (other["n"], other["mean"], other["ci_low"], other["ci_high"]) == (3, 0.5, None, None)
    empty = got[("best_scale", "default")]
    assert (empty["n"], empty["mean"], empty["ci_low"]) == (0, None, None)
    assert set(view["model_id"]) == {"m"} and set(view["settings_hash"]) == {"h"}
    assert set(view["created_at"]) == {T0} and view["is_latest"].all()


def test_eval_summary_marks_the_latest_evaluation(wh):
    wh.write({"eval_result": pl.concat([
        eval_rows("e-old", T0, "hit_top3", [1.0, 0.0]),
        eval_rows("e-new", T1, "hit_top3", [1.0, 1.0]),
        eval_rows("e-old", T0, "hit_top3", [1.0], sae_id="classes"),  # newest for its own set
    ])})
    view = wh.query("SELECT eval_id, sae_id, eval_rank, is_latest, mean FROM v_eval_summary "
                    "ORDER BY sae_id, eval_rank")
    assert view.rows() == [("e-old", "classes", 1, True, 1.0), ("e-new", "words", 1, True, 1.0),
                           ("e-old", "words", 2, False, 0.5)]
    latest = wh.query("SELECT mean FROM v_eval_summary WHERE is_latest AND sae_id = 'words'")
    assert latest["mean"].to_list() == [1.0]
