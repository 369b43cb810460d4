"""Every SQL file applies twice; migrations run forward once; foreign or newer files are refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest

from selfexplain.errors import WarehouseError
from selfexplain.warehouse import MEMORY, Warehouse, default_sql_dir

SQL = default_sql_dir()
SHIPPED = max((v for v, _, _ in Warehouse(MEMORY).migrations()), default=0)
"""The newest migration this selfexplain ships; tests of the mechanism add the next one."""
FILES = sorted((SQL / "tables").glob("*.sql")) + sorted((SQL / "views").glob("*.sql"))


def test_every_file_applies_twice_in_order():
    con = duckdb.connect()
    for path in FILES:
        con.execute(path.read_text())
    for path in FILES:
        con.execute(path.read_text())


def test_reopen_is_idempotent(tmp_path):
    path = tmp_path / "w.duckdb"
    for _ in range(3):
        with Warehouse(path) as wh:
            wh.apply_schema()
            versions = wh.query("SELECT version FROM schema_version").to_series().to_list()
    assert versions == list(range(SHIPPED + 1))  # baseline 0 and every shipped migration
    assert {"v_feature_labels", "v_scale_sweep", "v_failures", "v_runs", "v_saes",
            "v_eval_summary"} <= set(wh_views(path))


def wh_views(path: Path) -> list[str]:
    with Warehouse(path, read_only=True) as wh:
        return wh.views()


def test_every_upsert_has_a_table_with_a_key(wh):
    for path in sorted((SQL / "upserts").glob("*.sql")):
        assert wh.primary_key(path.stem), path.name


def test_forward_migration_runs_once(tmp_path):
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL, sql_dir)
    db = tmp_path / "w.duckdb"
    with Warehouse(db, sql_dir=sql_dir):  # created at the shipped version
        pass
    (sql_dir / "migrations").mkdir(exist_ok=True)
    (sql_dir / "migrations" / f"{SHIPPED + 1:03d}_label_note.sql").write_text(
        "ALTER TABLE label ADD COLUMN note VARCHAR;"
    )
    with Warehouse(db, sql_dir=sql_dir) as wh:
        assert wh.schema_version() == SHIPPED + 1
        assert "note" in wh.query("SELECT * FROM label LIMIT 0").columns
    with Warehouse(db, sql_dir=sql_dir) as wh:  # not applied again
        assert wh.schema_version() == SHIPPED + 1
    # A fresh warehouse is created at the latest version without running the migration.
    (sql_dir / "tables" / "010_label.sql").write_text(
        (SQL / "tables" / "010_label.sql").read_text().replace(
            "labelled_at         TIMESTAMPTZ NOT NULL,",
            "labelled_at         TIMESTAMPTZ NOT NULL,\n    note VARCHAR,",
        )
    )
    with Warehouse(MEMORY, sql_dir=sql_dir) as wh:
        assert wh.schema_version() == SHIPPED + 1
    # An older selfexplain refuses a newer warehouse.
    with pytest.raises(WarehouseError, match="newer than this selfexplain"):
        Warehouse(db)


def test_foreign_database_is_refused(tmp_path):
    db = tmp_path / "other.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE customers (id INTEGER)")
    con.close()
    with pytest.raises(WarehouseError, match="not a selfexplain warehouse"):
        Warehouse(db)


def test_broken_sql_file_names_the_file(tmp_path):
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL, sql_dir)
    (sql_dir / "views" / "999_v_broken.sql").write_text("CREATE OR REPLACE VIEW v AS SELECT nope;")
    with pytest.raises(WarehouseError, match="999_v_broken.sql"):
        Warehouse(MEMORY, sql_dir=sql_dir)


def test_reader_of_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(WarehouseError, match="does not exist"):
        Warehouse(tmp_path / "nope.duckdb", read_only=True)


def test_a_warehouse_from_before_the_round_trip_is_upgraded_in_place(tmp_path, make_results):
    """Migration 001 (label.max_roundtrip) on a warehouse written by the release before it."""
    from tests.sql.test_upserts import sample_rows

    db = tmp_path / "old.duckdb"
    with Warehouse(db) as wh:  # make it look like version 0: no column, no migration recorded
        wh.write({"label": sample_rows(make_results)["label"]})
        wh.con.execute("ALTER TABLE label DROP COLUMN max_roundtrip")
        wh.con.execute("DELETE FROM schema_version WHERE version > 0")
        before = wh.query("SELECT * FROM label ORDER BY feature")
    with Warehouse(db) as wh:
        assert wh.query("SELECT version, name FROM schema_version ORDER BY version").rows()[:2] == [
            (0, "baseline"), (1, "label_max_roundtrip")]
        after = wh.query("SELECT * FROM label ORDER BY feature")
        assert after.drop("max_roundtrip").equals(before)
        assert after["max_roundtrip"].null_count() == after.height
        assert "max_roundtrip" in wh.query("SELECT * FROM v_feature_labels LIMIT 0").columns


def test_a_warehouse_from_before_the_peak_token_is_upgraded_in_place(tmp_path, make_results):
    """Migration 004 (explanation.peak_token): stored candidates keep every value, NULL peak."""
    from tests.sql.test_upserts import sample_rows

    db = tmp_path / "old.duckdb"
    rows = sample_rows(make_results)
    with Warehouse(db) as wh:
        wh.write({k: rows[k] for k in ("run", "label", "label_current", "explanation")})
        wh.con.execute("DROP VIEW v_explanations")
        wh.con.execute("ALTER TABLE explanation DROP COLUMN peak_token")
        wh.con.execute("DELETE FROM schema_version WHERE version > 3")
        before = wh.query("SELECT * FROM explanation ORDER BY feature, candidate")
    with Warehouse(db) as wh:
        assert (4, "explanation_peak_token") in wh.query(
            "SELECT version, name FROM schema_version").rows()
        after = wh.query("SELECT * FROM explanation ORDER BY feature, candidate")
        assert after.drop("peak_token").equals(before) and before.height > 0
        assert after["peak_token"].null_count() == after.height
        assert "peak_token" in wh.query("SELECT * FROM v_explanations LIMIT 0").columns
