"""Backup and restore: `selfexplain export --backup` + `selfexplain import --backup` give back every
table exactly; the manifest and the warehouse record the schema version; a backup made before a
forward migration restores into the migrated warehouse, and a newer one is refused."""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli.cli import main
from selfexplain.errors import WarehouseError
from selfexplain.warehouse import MEMORY, Warehouse, backup, default_sql_dir, restore
from selfexplain.warehouse_rows import frame
from tests.sql.conftest import make_results
from tests.sql.test_upserts import sample_rows


def every_table(path) -> dict[str, pl.DataFrame]:
    with Warehouse(path, read_only=True) as wh:
        return {t: wh.table(t).sort(wh.primary_key(t)) for t in wh.tables()}


@pytest.fixture(scope="module")
def full(clean, tmp_path_factory):
    """A warehouse with rows in every table: a real relabel run plus hand-written rows for the
    tables relabel does not fill (references, evaluations, registry, statistics)."""
    path = tmp_path_factory.mktemp("full") / "w.duckdb"
    shutil.copyfile(clean, path)
    with Warehouse(path) as wh:
        wh.write(sample_rows(make_results))
    tables = every_table(path)
    assert all(rows.height for rows in tables.values()), {t: r.height for t, r in tables.items()}
    return path


def test_round_trip_is_lossless(full, tmp_path, capsys):
    folder, restored = tmp_path / "backup", tmp_path / "restored.duckdb"
    assert main(["export", "--backup", str(folder), "--warehouse", str(full)]) == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    original = every_table(full)
    with Warehouse(full, read_only=True) as wh:
        assert manifest["schema_version"] == wh.schema_version()
    assert manifest["tables"] == {t: rows.height for t, rows in original.items()}

    for _ in range(2):  # restoring twice changes nothing
        assert main(["import", "--backup", str(folder), "--warehouse", str(restored)]) == 0
        back = every_table(restored)
        assert back.keys() == original.keys()
        for table, rows in original.items():
            if table == "schema_version":  # the target records its own versions
                assert back[table]["version"].to_list() == rows["version"].to_list()
                continue
            assert back[table].equals(rows), table
    with Warehouse(full, read_only=True) as a, Warehouse(restored, read_only=True) as b:
        query = "SELECT * FROM v_feature_labels ORDER BY release, sae_id, feature"
        assert a.query(query).equals(b.query(query))
    capsys.readouterr()


def test_restore_keeps_what_the_target_already_holds(full, tmp_path):
    folder, target = tmp_path / "backup", tmp_path / "target.duckdb"
    with Warehouse(full, read_only=True) as wh:
        backup(wh, folder)
    ref = frame("reference_label", [dict(source="mine", release="x", sae_id="y", feature=7,
                                         description="kept", imported_at=dt.datetime.now(dt.UTC))])
    with Warehouse(target) as wh:
        wh.write({"reference_label": ref})
        restore(wh, folder)
        kept = wh.query("SELECT description FROM reference_label WHERE source = 'mine'")
        total = wh.query("SELECT count(*) AS n FROM reference_label")["n"][0]
    assert kept["description"].to_list() == ["kept"]
    assert total == every_table(full)["reference_label"].height + 1


def test_backup_refuses_a_folder_in_use(full, tmp_path):
    folder = tmp_path / "backup"
    folder.mkdir()
    (folder / "mine.txt").write_text("x")
    with Warehouse(full, read_only=True) as wh, pytest.raises(WarehouseError, match="exists"):
        backup(wh, folder)
    assert [p.name for p in folder.iterdir()] == ["mine.txt"]


SHIPPED = max((v for v, _, _ in Warehouse(MEMORY).migrations()), default=0)
"""The newest migration this selfexplain ships; the tests add the next one."""
NEXT = SHIPPED + 1


def migrated_sql(tmp_path):
    """The shipped sql/ plus a next forward migration adding label.note, the table's last column
    (upserted too)."""
    sql = tmp_path / "sql"
    shutil.copytree(default_sql_dir(), sql)
    (sql / "migrations").mkdir(exist_ok=True)
    (sql / "migrations" / f"{NEXT:03d}_label_note.sql").write_text(
        "ALTER TABLE label ADD COLUMN note VARCHAR;")
    table = (sql / "tables" / "010_label.sql").read_text()
    (sql / "tables" / "010_label.sql").write_text(table.replace(
        "carried_cosine       DOUBLE,", "carried_cosine       DOUBLE,\n"
        "    note                VARCHAR,"))
    upsert = (sql / "upserts" / "label.sql").read_text()
    upsert = upsert.replace("carried_from_feature, carried_cosine)",
                            "carried_from_feature, carried_cosine, note)", 1)
    upsert = upsert.replace("carried_from_feature, carried_cosine\nFROM incoming",
                            "carried_from_feature, carried_cosine, note\nFROM incoming")
    upsert = upsert.replace("carried_cosine = excluded.carried_cosine;",
                            "carried_cosine = excluded.carried_cosine,\n    note = excluded.note;")
    assert upsert.count("note") == 4  # column list, SELECT list, note = excluded.note
    (sql / "upserts" / "label.sql").write_text(upsert)
    return sql


def test_forward_migration_and_restoring_across_it(full, tmp_path):
    sql = migrated_sql(tmp_path)
    old_backup, live = tmp_path / "v0", tmp_path / "live.duckdb"
    with Warehouse(full, read_only=True) as wh:
        assert wh.schema_version() == SHIPPED
        backup(wh, old_backup)
    shutil.copyfile(full, live)
    labels = every_table(live)["label"]

    with Warehouse(live, sql_dir=sql) as wh:  # the migration applies forward, once
        assert wh.schema_version() == NEXT
        assert wh.query("SELECT version, name FROM schema_version ORDER BY version").rows()[-1] \
            == (NEXT, "label_note")
        migrated = wh.table("label").sort(wh.primary_key("label"))
    assert migrated.drop("note").equals(labels) and migrated["note"].null_count() == labels.height
    with Warehouse(live, sql_dir=sql) as wh:
        assert wh.query("SELECT count(*) AS n FROM schema_version")["n"][0] == NEXT + 1

    with Warehouse(MEMORY, sql_dir=sql) as fresh:  # an older backup restores into the newer
        assert fresh.schema_version() == NEXT
        restore(fresh, old_backup)
        back = fresh.table("label").sort(fresh.primary_key("label"))
        assert back.drop("note").equals(labels)
        new_backup = tmp_path / "v1"
        backup(fresh, new_backup)
    assert json.loads((new_backup / "manifest.json").read_text())["schema_version"] == NEXT
    with Warehouse(MEMORY) as older, pytest.raises(WarehouseError,
                                                   match="newer than .* upgrade selfexplain"):
        restore(older, new_backup)  # a newer backup into a selfexplain that does not know it


# -- lossless for awkward values: property over random label rows ----------------------------------
texts = st.one_of(st.none(), st.text(max_size=12))
floats = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=64))
label_rows = st.lists(st.fixed_dictionaries({
    "feature": st.integers(0, 2**31 - 1), "run_id": st.sampled_from(["a", "b", "é", ""]),
    "label": texts, "top_labels": st.lists(st.text(max_size=5), max_size=3),
    "recovered_token": texts, "scale": floats, "composite": floats, "failed": st.booleans(),
    "skipped": st.booleans(), "labelled_at": st.datetimes(
        min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2200, 1, 1),
        timezones=st.just(dt.UTC)),
}), min_size=1, max_size=6)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(label_rows)
def test_backup_restore_keeps_awkward_values(tmp_path_factory, rows):
    folder = tmp_path_factory.mktemp("b") / "backup"
    batch = frame("label", [dict(r, release="r", sae_id="s") for r in rows])
    with Warehouse(MEMORY) as a:
        a.write({"label": batch})
        before = a.table("label").sort(["feature", "run_id"])
        backup(a, folder)
    with Warehouse(MEMORY) as b:
        restore(b, folder)
        after = b.table("label").sort(["feature", "run_id"])
    assert before.schema == after.schema
    for column in before.columns:  # NaN == NaN here: equal values, not IEEE comparison
        x, y = before[column].to_list(), after[column].to_list()
        same = [u == v or (isinstance(u, float) and isinstance(v, float) and math.isnan(u)
                           and math.isnan(v)) for u, v in zip(x, y)]
        assert all(same) and len(x) == len(y), column
