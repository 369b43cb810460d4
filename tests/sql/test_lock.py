"""One writer: a second process gets a one-line 'in use by PID N' error; readers use the snapshot."""

from __future__ import annotations

import pytest

from selfexplain.warehouse import Warehouse, WarehouseInUse, snapshot_path

from selfexplain.warehouse_read import open_reader
from tests.sql.conftest import held_by_another_process, with_one_reference_label

@pytest.fixture
def held(tmp_path):
    path = with_one_reference_label(tmp_path / "w.duckdb")
    with Warehouse(path) as wh:
        wh.publish_snapshot()
    with held_by_another_process(path) as proc:
        yield path, proc


def test_second_writer_gets_the_pid(held):
    path, proc = held
    with pytest.raises(WarehouseInUse) as info:
        Warehouse(path)
    assert info.value.pid == proc.pid
    assert str(info.value).startswith(f"warehouse {path} is in use by PID {proc.pid}")
    assert "\n" not in str(info.value)


def test_reader_falls_back_to_the_snapshot(held):
    path, proc = held
    with open_reader(path, wait_s=0) as reader:
        assert reader.path == str(snapshot_path(path))
        assert f"PID {proc.pid}" in reader.note
        assert reader.query("SELECT description FROM reference_label")["description"][0] == "cats"
    with pytest.raises(WarehouseInUse):
        open_reader(path, snapshot=False, wait_s=0)
