"""A warehouse for the browser tests: labels made by the engine on the tiny model, statistics,
an evaluation, and one label that a model could have written to attack the page."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from selfexplain.config import ExplainConfig
from selfexplain.explain import explain_sae_features
from selfexplain.statstore import load_sae
from selfexplain.warehouse import Warehouse
from selfexplain.warehouse_rows import feature_rows, frame
from tests.conftest import write_sae_folder

RELEASE, SAE_ID = "local:tiny_sae", "tiny_sae"
ATTACK = "<script>alert(1)</script>"
N_FEATURES = 6


def stats_rows() -> pl.DataFrame:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    return pl.DataFrame({
        "release": [RELEASE] * N_FEATURES, "sae_id": [SAE_ID] * N_FEATURES,
        "feature": list(range(N_FEATURES)),
        "density": [0.001 * (f + 1) for f in range(N_FEATURES)],
        "mean_activation": [2.0] * N_FEATURES, "max_activation": [5.0] * N_FEATURES,
        "top_tokens": [[" cat", " dog"]] * N_FEATURES, "top_token_share": [0.6] * N_FEATURES,
        "single_token": [f % 2 == 0 for f in range(N_FEATURES)],
        "vocabproj_tokens": [[" kitten"]] * N_FEATURES,
        "top_contexts": [[{"text": "the «cat» sat", "activation": 5.0},
                          {"text": "a <b>«dog»</b> ran", "activation": 2.5}]] * N_FEATURES,
        "token_alignment": [0.7 if f % 2 == 0 else None for f in range(N_FEATURES)],
        "computed_at": [now] * N_FEATURES,
    })


@pytest.fixture(scope="session")
def browse_warehouse(tmp_path_factory, tiny_lm) -> Path:
    root = tmp_path_factory.mktemp("browse")
    folder = write_sae_folder(root / "tiny_sae", tiny_lm.d_model, N_FEATURES)
    sae = load_sae(str(folder))
    config = ExplainConfig.from_preset("default", max_new_tokens=3, samples_per_scale=1,
                                       top_scales=2)
    results, skipped = explain_sae_features(tiny_lm, sae, list(range(N_FEATURES)), config)
    path = root / "w.duckdb"
    with Warehouse(path) as wh:
        now = dt.datetime.now(dt.timezone.utc)
        wh.upsert("sae", frame("sae", [dict(release=RELEASE, sae_id=SAE_ID, source="local",
                                            model_id="tiny", hook_name=sae.hook_name,
                                            d_sae=N_FEATURES, first_seen=now, last_seen=now)]))
        for run, when in (("run-old", now - dt.timedelta(days=1)), ("run-new", now)):
            rows = feature_rows(results, skipped, release=RELEASE, sae_id=SAE_ID, run_id=run,
                                model_id="tiny", model_revision="local", preset="default",
                                settings_hash=config.settings_hash(), labelled_at=when)
            for table, data in rows.items():
                wh.upsert(table, data)
        wh.upsert("feature_stats", stats_rows())
        wh.execute("UPDATE label SET label = ?, top_labels = [?] WHERE feature = 0 "
                   "AND run_id = 'run-new'", [ATTACK, ATTACK])
        wh.execute("UPDATE label SET label = 'a cat', failed = true WHERE feature = 1 "
                   "AND run_id = 'run-new'")
        wh.execute("UPDATE label SET label = 'dogs and cats', failed = false WHERE feature = 2 "
                   "AND run_id = 'run-new'")
        wh.execute("UPDATE label SET carried_from_release = 'local:old', carried_from_sae_id = "
                   "'old', carried_from_feature = 9, carried_cosine = 0.95 WHERE feature = 3 "
                   "AND run_id = 'run-new'")
        wh.upsert("label_score", frame("label_score", [dict(  # features 0-3 scored, 4-5 not
            release=RELEASE, sae_id=SAE_ID, feature=f, run_id="run-new", scorer="embedding",
            label=None, detection_auroc=0.55 + 0.1 * f, detection_auroc_hard=0.5 + 0.05 * f,
            n_activating=64, n_random=64, n_hard=60, stats_dir="/stats", scored_at=now)
            for f in range(4)]))
        wh.upsert("eval_result", pl.DataFrame([dict(
            eval_id="eval-1", suite="planted", release="planted", sae_id="words_dev",
            feature=i, method="default", metric="hit_top3", value=float(i % 2), name=f"w{i}",
            detail_json=None, model_id="tiny", settings_hash="h", run_id=None, created_at=now)
            for i in range(4)]))
    return path
