"""`selfexplain sql`, `export` and `import` on a small hand-filled warehouse (no model, no Prefect)."""

from __future__ import annotations

import datetime as dt
import json

import polars as pl
import pytest

from cli.cli import main
from selfexplain.warehouse import Warehouse
from selfexplain.warehouse_rows import feature_rows, frame

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


@pytest.fixture
def filled(tmp_path, make_results):
    path = tmp_path / "w.duckdb"
    results, skipped = make_results()
    with Warehouse(path) as wh:
        rows = feature_rows(results, skipped, release="gemma-2b-res-jb",
                            sae_id="blocks.6.hook_resid_post", run_id="run1", model_id="m",
                            model_revision="rev", preset="default", settings_hash="h",
                            labelled_at=T0)
        rows["sae"] = frame("sae", [dict(release="gemma-2b-res-jb",
                                         sae_id="blocks.6.hook_resid_post", source="registry",
                                         resid_layer=7, neuronpedia_id="gemma-2b/6-res-jb",
                                         first_seen=T0, last_seen=T0)])
        wh.write(rows)
    return path


def test_sql_prints_a_polars_table(filled, capsys):
    assert main(["sql", "SELECT feature, label FROM v_feature_labels ORDER BY feature",
                 "--warehouse", str(filled)]) == 0
    out = capsys.readouterr().out
    assert "shape: (4, 2)" in out and "a word 0" in out


@pytest.mark.parametrize("query", ["DELETE FROM label", "CREATE TABLE x (a INT)",
                                   "COPY label TO 'x.csv'", "ATTACH 'x.duckdb' AS x",
                                   "SELECT 1; DROP TABLE label"])
def test_sql_refuses_writes(filled, capsys, query):
    assert main(["sql", query, "--warehouse", str(filled)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    with Warehouse(filled, read_only=True) as wh:
        assert wh.query("SELECT count(*) AS n FROM label")["n"][0] == 4


def test_sql_on_a_missing_warehouse_says_what_to_do(tmp_path, capsys):
    assert main(["sql", "SELECT 1", "--warehouse", str(tmp_path / "none.duckdb")]) == 2
    assert "run `selfexplain relabel" in capsys.readouterr().err


def test_export_jsonl_is_neuronpedia_like(filled, tmp_path):
    out = tmp_path / "labels.jsonl"
    assert main(["export", "--format", "jsonl", "--out", str(out), "--warehouse",
                 str(filled)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == ["0", "1"]  # failed and skipped are left out
    assert rows[0]["modelId"] == "gemma-2b" and rows[0]["layer"] == "6-res-jb"
    assert rows[0]["description"] == "a word 0"
    parquet = tmp_path / "labels.parquet"
    main(["export", "--format", "parquet", "--out", str(parquet), "--include-failed",
          "--warehouse", str(filled)])
    assert pl.read_parquet(parquet).height == 3


def test_backup_restore_round_trip(filled, tmp_path):
    backup, restored = tmp_path / "backup", tmp_path / "restored.duckdb"
    assert main(["export", "--backup", str(backup), "--warehouse", str(filled)]) == 0
    for _ in range(2):  # restoring twice changes nothing
        assert main(["import", "--backup", str(backup), "--warehouse", str(restored)]) == 0
    with Warehouse(filled) as a, Warehouse(restored) as b:
        for table in ("label", "label_current", "explanation", "scale_metric", "sae"):
            key = a.primary_key(table)
            assert a.table(table).sort(key).equals(b.table(table).sort(key)), table


def test_import_reference_labels(filled, tmp_path):
    src = tmp_path / "np.jsonl"
    src.write_text('{"modelId": "gemma-2b", "layer": "6-res-jb", "index": "0", '
                   '"description": "cats", "explanationModelName": "gpt-3.5-turbo"}\n')
    args = ["import", "--reference", str(src), "--release", "gemma-2b-res-jb", "--sae-id",
            "blocks.6.hook_resid_post", "--warehouse", str(filled)]
    assert main(args) == 0 and main(args) == 0
    with Warehouse(filled) as wh:
        ref = wh.table("reference_label")
    assert ref.select("feature", "description", "explanation_model").rows() == [
        (0, "cats", "gpt-3.5-turbo")]
