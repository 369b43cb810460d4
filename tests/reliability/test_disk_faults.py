"""A read-only or full disk, simulated where the write happens (this machine has no tiny tmpfs and
tests run as root, so chmod cannot make a folder read-only): DuckDB's own I/O errors from the
connection, OSError(ENOSPC/EROFS) from Python file writes. Each ends in one line saying what to
do; a failed shard write leaves no half-written shard, and the run resumes once there is space."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import duckdb
import polars as pl
import pytest

import selfexplain.runlock
import selfexplain.warehouse
from rel_common import all_rows, assert_same_rows, contents, one_error_line, relabel_args
from cli.cli import main
from selfexplain.warehouse import Warehouse, snapshot_path

REAL_CONNECT = duckdb.connect
NO_SPACE = 'IO Error: Could not write file "{path}.wal": No space left on device'
READ_ONLY = 'IO Error: Cannot open file "{path}": Read-only file system'


class FullDisk:
    """A DuckDB connection whose COMMIT fails as on a full disk (optionally only for transactions
    that wrote labels, i.e. shard writes); everything else is passed through."""

    def __init__(self, con, path: str, only_labels: bool):
        self._con, self._path, self._only_labels = con, path, only_labels
        self._labels = False

    def execute(self, sql, *args, **kwargs):
        text = sql.strip().upper() if isinstance(sql, str) else ""
        if text.startswith("INSERT INTO LABEL ("):
            self._labels = True
        if text == "COMMIT" and (self._labels or not self._only_labels):
            self._labels = False
            raise duckdb.IOException(NO_SPACE.format(path=self._path))
        if text in ("BEGIN TRANSACTION", "ROLLBACK"):
            self._labels = False
        return self._con.execute(sql, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._con, name)


def full_disk(monkeypatch, warehouse: Path, only_labels: bool = False) -> None:
    def connect(database=":memory:", read_only=False, **kwargs):
        con = REAL_CONNECT(database, read_only=read_only, **kwargs)
        if str(database) == str(warehouse) and not read_only:
            return FullDisk(con, str(database), only_labels)
        return con

    monkeypatch.setattr(duckdb, "connect", connect)


def test_full_disk_when_opening_the_warehouse(clean, model_dir, sae_file, tmp_path, monkeypatch,
                                              capsys):
    warehouse = tmp_path / "w.duckdb"
    shutil.copyfile(clean, warehouse)
    before = all_rows(warehouse)
    full_disk(monkeypatch, warehouse)
    assert main(relabel_args(model_dir, sae_file, warehouse, "6-11")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and "free some disk space" in line, line
    monkeypatch.undo()
    assert_same_rows(all_rows(warehouse), before)


def test_full_disk_during_a_shard_write_then_resume(clean, model_dir, sae_file, tmp_path,
                                                   monkeypatch, capsys):
    warehouse = tmp_path / "w.duckdb"
    full_disk(monkeypatch, warehouse, only_labels=True)
    assert main(relabel_args(model_dir, sae_file, warehouse, "0-5")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert ("writing" in line and "No space left on device" in line
            and "free some disk space, then run again" in line), line
    monkeypatch.undo()
    with Warehouse(warehouse) as wh:  # no half-written shard; the run says why it failed
        assert wh.query("SELECT count(*) AS n FROM label")["n"][0] == 0
        assert wh.query("SELECT count(*) AS n FROM shard_done")["n"][0] == 0
        run = wh.query("SELECT status, error FROM run").row(0)
    assert run[0] == "failed" and "No space left on device" in run[1]
    # Space freed: the rerun completes with exactly the undisturbed run's rows.
    assert main(relabel_args(model_dir, sae_file, warehouse, "0-5")) == 0
    assert_same_rows(contents(warehouse), contents(clean))


def test_read_only_disk(clean, model_dir, sae_file, tmp_path, monkeypatch, capsys):
    warehouse = tmp_path / "w.duckdb"
    shutil.copyfile(clean, warehouse)
    before = all_rows(warehouse)

    def connect(database=":memory:", read_only=False, **kwargs):
        if str(database) == str(warehouse) and not read_only:
            raise duckdb.IOException(READ_ONLY.format(path=database))
        return REAL_CONNECT(database, read_only=read_only, **kwargs)

    monkeypatch.setattr(duckdb, "connect", connect)
    assert main(relabel_args(model_dir, sae_file, warehouse, "6-11")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "Read-only file system" in line and f"make {tmp_path} writable" in line, line
    # Readers still work on a read-only disk.
    assert main(["sql", "SELECT count(*) AS n FROM v_feature_labels", "--warehouse",
                 str(warehouse), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["n", "6"]
    monkeypatch.undo()
    assert_same_rows(all_rows(warehouse), before)


def test_read_only_folder_for_the_lock_file(model_dir, sae_file, tmp_path, monkeypatch, capsys):
    real_open = selfexplain.runlock.os.open

    def no_lock(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(selfexplain.runlock.os, "open", no_lock)
    warehouse = tmp_path / "w.duckdb"
    assert main(relabel_args(model_dir, sae_file, warehouse, "0-5")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "cannot create the lock file" in line and f"make {tmp_path} writable" in line, line
    assert not warehouse.exists()


def fail_after(monkeypatch, owner, name: str, calls: int, code: int = errno.ENOSPC) -> None:
    """`owner.name` (a file writer) writes a few bytes, then fails like a full disk, from the
    `calls`-th call on."""
    real = getattr(owner, name)
    seen = {"n": 0}

    def writer(self_or_src, target, *args, **kwargs):
        seen["n"] += 1
        if seen["n"] >= calls:
            Path(target).write_bytes(b"PAR1 half")
            raise OSError(code, "No space left on device" if code == errno.ENOSPC
                          else "Read-only file system")
        return real(self_or_src, target, *args, **kwargs)

    monkeypatch.setattr(owner, name, writer)


def test_full_disk_when_publishing_the_snapshot(clean, model_dir, sae_file, tmp_path,
                                                monkeypatch, capsys):
    warehouse = tmp_path / "w.duckdb"
    fail_after(monkeypatch, selfexplain.warehouse.shutil, "copyfile", 1)
    assert main(relabel_args(model_dir, sae_file, warehouse, "0-5")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "cannot publish the snapshot" in line and "free some disk space" in line, line
    monkeypatch.undo()
    partial = snapshot_path(warehouse).with_name(snapshot_path(warehouse).name + ".partial")
    assert not partial.exists() and not snapshot_path(warehouse).exists()
    assert_same_rows(contents(warehouse), contents(clean))  # the labels themselves are stored


def test_full_disk_when_writing_the_plot_does_not_fail_the_run(clean, model_dir, sae_file,
                                                               tmp_path, monkeypatch, capsys):
    real = Path.write_bytes

    def write_bytes(self, data):
        if self.suffix == ".png":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    warehouse = tmp_path / "w.duckdb"
    assert main(relabel_args(model_dir, sae_file, warehouse, "0-5")) == 0
    assert "scale sweep plot" not in capsys.readouterr().out
    assert_same_rows(contents(warehouse), contents(clean))


@pytest.mark.parametrize("code, hint", [(errno.ENOSPC, "free some disk space"),
                                        (errno.EROFS, "writable, or pass another --out path")])
def test_export_on_a_full_or_read_only_disk(clean, tmp_path, monkeypatch, capsys, code, hint):
    out = tmp_path / "labels.jsonl"
    fail_after(monkeypatch, pl.DataFrame, "write_ndjson", 1, code)
    assert main(["export", "--out", str(out), "--warehouse", str(clean)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot write {out}" in line and hint in line, line
    assert list(tmp_path.iterdir()) == []  # no half file, under any name


@pytest.mark.parametrize("code, hint", [(errno.ENOSPC, "free some disk space"),
                                        (errno.EROFS, "writable, or pass another --backup path")])
def test_backup_on_a_full_or_read_only_disk(clean, tmp_path, monkeypatch, capsys, code, hint):
    backup = tmp_path / "backup"
    fail_after(monkeypatch, pl.DataFrame, "write_parquet", 3, code)
    assert main(["export", "--backup", str(backup), "--warehouse", str(clean)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot write the backup {backup}" in line and hint in line, line
    assert list(tmp_path.iterdir()) == []  # neither the backup nor its .partial
