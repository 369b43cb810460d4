"""One writer: a second relabel against a warehouse in use fails at once with a one-line message
naming the PID, the first finishes with its rows intact; `selfexplain sql` during a write reads the
published snapshot with a note, or says clearly that the file is busy."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

import relabel_proc
from rel_common import all_rows, assert_same_rows, contents, one_error_line, relabel_args
from cli.cli import main
from selfexplain.errors import WarehouseError
from selfexplain.runlock import lock_path, writer_lock
from selfexplain.warehouse import Warehouse, WarehouseInUse, snapshot_path
from tests.sql.conftest import held_by_another_process, with_one_reference_label

HOLD = textwrap.dedent("""
    import sys
    from selfexplain.warehouse import Warehouse
    wh = Warehouse(sys.argv[1])
    wh.con.execute("BEGIN TRANSACTION")
    wh.execute("DELETE FROM reference_label")  # a write in progress, never committed
    print("ready", flush=True)
    sys.stdin.readline()
""")


def wait_for_lock(path, pid: int, timeout: float = 60.0) -> None:
    """Until process `pid` holds the run lock of `path` (its PID is in the lock file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock_path(path).is_file() and lock_path(path).read_text().strip() == str(pid):
            return
        time.sleep(0.05)
    raise AssertionError(f"PID {pid} never took the lock of {path}")


def test_second_relabel_fails_with_the_pid_and_the_first_finishes_intact(
        procs, clean, model_dir, sae_file, tmp_path, capsys):
    warehouse = tmp_path / "w.duckdb"
    argv = relabel_args(model_dir, sae_file, warehouse, "0-5")
    first = relabel_proc.start(procs, argv, tmp_path / "log-first")
    try:
        wait_for_lock(warehouse, first.pid)
        # The CLI: refused before anything starts, one line naming the running PID.
        assert main(argv) == 2
        line = one_error_line(capsys.readouterr().err)
        assert line == (f"error: warehouse {warehouse} is in use by PID {first.pid} (a relabel "
                        "or merge run): wait for it to finish, or pass another --warehouse path")
        # The flow itself (a deployment run, no CLI in front): the same refusal.
        from flows.relabel import relabel
        from cli.relabel import build_request
        from cli.cli import build_parser

        request = build_request(build_parser().parse_args(argv))
        with pytest.raises(WarehouseInUse, match=f"in use by PID {first.pid}"):
            relabel(request)
    finally:
        first.join(180)
    assert first.exitcode == 0, (tmp_path / "log-first").read_text()

    # The first run's rows are whole: the same as a run that was never disturbed.
    assert_same_rows(contents(warehouse), contents(clean))
    with Warehouse(warehouse) as wh:
        assert wh.query("SELECT status FROM run")["status"].to_list() == ["completed"]


def test_the_lock_is_released_on_exit_and_reentrant(tmp_path):
    path = tmp_path / "w.duckdb"
    with writer_lock(path):
        with writer_lock(path):  # the CLI holds it, the flow takes it again in the same process
            pass
        probe = subprocess.run(
            [sys.executable, "-c", "import sys; from selfexplain.runlock import writer_lock\n"
             "with writer_lock(sys.argv[1]): pass", str(path)],
            capture_output=True, text=True)
        assert probe.returncode != 0 and f"in use by PID {__import__('os').getpid()}" in probe.stderr
    with writer_lock(path):  # released
        pass


LOCK = textwrap.dedent("""
    import sys
    from selfexplain.runlock import writer_lock
    with writer_lock(sys.argv[1]):
        print("ready", flush=True)
        sys.stdin.readline()
""")


def test_merging_shards_while_a_run_writes_fails_at_once(prefect_server, tmp_path, capsys):
    warehouse, shards = tmp_path / "w.duckdb", tmp_path / "shards"
    shards.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", LOCK, str(warehouse)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert main(["import", "--shards", str(shards), "--warehouse", str(warehouse)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"is in use by PID {proc.pid} (a relabel or merge run)" in line
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert not warehouse.exists()


@pytest.fixture
def held(tmp_path):
    """A warehouse whose DuckDB file another process holds in the middle of a write."""
    path = with_one_reference_label(tmp_path / "w.duckdb")
    with held_by_another_process(path, HOLD) as proc:
        yield path, proc


def test_sql_during_a_write_says_the_file_is_busy(held, capsys):
    path, proc = held
    assert main(["sql", "SELECT count(*) AS n FROM reference_label", "--warehouse",
                 str(path)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"is in use by PID {proc.pid}" in line and "snapshot" in line


def test_sql_during_a_write_reads_the_snapshot(held, capsys):
    path, proc = held
    proc.stdin.close()
    proc.wait(timeout=30)  # publish a snapshot, then hold the file again
    with Warehouse(path) as wh:
        wh.publish_snapshot()
    with held_by_another_process(path, HOLD) as again:
        assert main(["sql", "SELECT description FROM reference_label", "--warehouse", str(path),
                     "--format", "csv"]) == 0
        out, err = capsys.readouterr()
        assert out.splitlines() == ["description", "cats"]  # the committed rows
        assert f"in use by PID {again.pid}" in err and "reading the snapshot" in err
    # The interrupted write never landed.
    assert all_rows(path)["reference_label"]["description"].to_list() == ["cats"]
    assert snapshot_path(path).is_file()


def test_a_second_writer_of_the_duckdb_file_gets_the_pid(held):
    path, proc = held
    with pytest.raises(WarehouseError, match=f"in use by PID {proc.pid}"):
        Warehouse(path)


def test_every_writer_waits_or_says_in_one_line_that_another_holds_the_warehouse(
        tmp_path, capsys):
    """While another process holds the warehouse (a relabel run), import and the watch and
    scoring writers refuse in one line naming its PID, evaluate's writer waits for it, and once
    it is released every write lands: no row lost."""
    import threading


    from selfexplain.runlock import write_locked
    from selfexplain.warehouse_rows import frame, utc_now
    from tasks.score import best_scored_current
    from tasks.watch import record_changes

    warehouse = tmp_path / "w.duckdb"
    Warehouse(warehouse).close()
    refs = tmp_path / "refs.jsonl"
    refs.write_text('{"index": "0", "description": "cats"}\n{"index": "1", "description": "dogs"}\n')
    proc = subprocess.Popen([sys.executable, "-c", LOCK, str(warehouse)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    now = utc_now()
    sae_row = {"sae": frame("sae", [dict(release="r", sae_id="s", source="local", d_sae=4,
                                         d_model=8, first_seen=now, last_seen=now)])}
    try:
        assert proc.stdout.readline().strip() == "ready"
        imported = ["import", "--reference", str(refs), "--release", "r", "--sae-id", "s",
                    "--warehouse", str(warehouse)]
        assert main(imported) == 2
        assert f"is in use by PID {proc.pid}" in one_error_line(capsys.readouterr().err)
        for write in (lambda: record_changes.fn(str(warehouse), sae_row),
                      lambda: best_scored_current.fn(str(warehouse), "r", "s")):
            with pytest.raises(WarehouseInUse, match=f"in use by PID {proc.pid}"):
                write()
        # evaluate's writer waits: the holder lets go after a second, then its rows land
        threading.Timer(1.0, proc.stdin.close).start()
        began = time.monotonic()
        assert write_locked(warehouse, sae_row, wait_s=60) == {"sae": 1}
        assert time.monotonic() - began >= 0.9
    finally:
        if not proc.stdin.closed:
            proc.stdin.close()
        proc.wait(timeout=30)
    assert main(imported) == 0
    assert record_changes.fn(str(warehouse), sae_row) == {"sae": 1}
    with Warehouse(warehouse, read_only=True) as wh:
        assert wh.query("SELECT count(*) AS n FROM reference_label")["n"][0] == 2
        assert wh.query("SELECT count(*) AS n FROM sae")["n"][0] == 1
