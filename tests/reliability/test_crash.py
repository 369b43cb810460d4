"""Crash safety: `selfexplain relabel` SIGKILLed at seeded random moments (and once in the middle
of a shard's write transaction), then run to completion, stores exactly the rows of an
uninterrupted run: no duplicates, no lost features, and no half-written shard ever visible."""

from __future__ import annotations

import random
import re
import time

import polars as pl
import pytest

import relabel_proc
from rel_common import assert_same_rows, contents, relabel_args
from selfexplain.warehouse import Warehouse
from selfexplain.warehouse_read import open_reader

FEATURES = list(range(12))
SHARD = 3
RANDOM_KILLS = 3
SEED = 8


FLOW_STARTS = "starting Prefect"
"""What the CLI prints once its checks are done and the flow begins (model loaded, engine built)."""
SHARD_STORED = re.compile(r"shard 1/\d+ \(features")
"""What the flow logs once its first shard is stored (the children log at INFO)."""


def wait_for(proc, log, pattern, timeout: float = 120.0) -> float:
    """Seconds until `proc` writes `pattern` to its log (or ends)."""
    began = time.monotonic()
    while proc.is_alive() and time.monotonic() - began < timeout:
        if log.is_file() and re.search(pattern, log.read_text(errors="replace")):
            break
        time.sleep(0.02)
    return time.monotonic() - began


@pytest.fixture(scope="module")
def baseline(procs, model_dir, sae_file, tmp_path_factory):
    """An uninterrupted run of the request: its rows, and the seconds before and in its flow."""
    folder = tmp_path_factory.mktemp("baseline")
    proc = relabel_proc.start(procs, relabel_args(model_dir, sae_file, folder / "w.duckdb"),
                              folder / "log")
    before_flow = wait_for(proc, folder / "log", FLOW_STARTS)
    began = time.monotonic()
    proc.join(180)
    in_flow = time.monotonic() - began
    assert proc.exitcode == 0, (folder / "log").read_text()
    return contents(folder / "w.duckdb"), before_flow, in_flow


def check_consistent(path, expected: dict[str, pl.DataFrame]) -> set[int]:
    """What a killed run left: whole shards only, each stored once and equal to the uninterrupted
    run's rows for those features. Returns the stored features."""
    with open_reader(path) as reader:  # a reader after the crash: opens, sees whole shards only
        seen = reader.query("SELECT feature FROM v_feature_labels")["feature"].to_list()
    with Warehouse(path) as wh:  # what the next run opens
        shards = wh.query("SELECT features FROM shard_done")["features"].to_list()
        per_table = {t: wh.query(f"SELECT feature FROM {t}")["feature"].to_list()
                     for t in ("label", "label_current", "v_feature_labels")}
        statuses = wh.query("SELECT status FROM run")["status"].to_list()
    stored = [f for shard in shards for f in shard]
    assert len(stored) == len(set(stored)), f"a shard was stored twice: {shards}"
    assert all(len(shard) == SHARD for shard in shards), shards
    for table, features in per_table.items():  # one row per stored feature, nothing else
        assert sorted(features) == sorted(stored), (table, features, shards)
    assert set(seen) <= set(stored)
    assert set(statuses) <= {"running", "interrupted", "completed"}
    if "completed" in statuses:  # killed after its last row (snapshot, artifacts): all stored
        assert sorted(stored) == FEATURES
    for table, rows in contents(path).items():
        if table == "sae":
            want = expected[table] if rows.height else expected[table].clear()
        elif table == "shard_done":
            want = expected[table].filter(pl.col("features").list.first().is_in(stored))
        else:
            want = expected[table].filter(pl.col("feature").is_in(stored))
        assert rows.equals(want), f"{table} after the kill differs from the clean run"
    return set(stored)


def test_sigkill_at_random_moments_then_resume_gives_the_clean_rows(procs, baseline, model_dir,
                                                                    sae_file, tmp_path):
    expected, before_flow, in_flow = baseline
    assert sorted(expected["v_feature_labels"]["feature"]) == FEATURES
    warehouse = tmp_path / "w.duckdb"
    argv = relabel_args(model_dir, sae_file, warehouse)
    rng = random.Random(SEED)
    history: list[tuple[str, int]] = []

    # A kill inside the second shard's write transaction: labels upserted, COMMIT not reached.
    proc = relabel_proc.start(procs, argv, tmp_path / "log-write", fault="kill-in-write:2")
    proc.join(180)
    assert proc.exitcode == -9, (tmp_path / "log-write").read_text()
    stored = check_consistent(warehouse, expected)
    assert stored == set(FEATURES[:SHARD])  # shard 1 committed, shard 2 rolled back
    history.append(("in-write", len(stored)))

    # Kills at seeded random moments: while the CLI checks its input and loads the model, just
    # after the flow stored its first shard (in the next shard's work or write, or in the snapshot
    # and artifacts when no shard is left), and anywhere in the flow.
    kills = 0
    for attempt in range(RANDOM_KILLS):
        log = tmp_path / f"log-{attempt}"
        proc = relabel_proc.start(procs, argv, log)
        if attempt == 0:
            delay = rng.uniform(0.2, 0.9) * before_flow
            moment = f"{delay:.1f} s after the start"
        elif attempt == 1:
            wait_for(proc, log, SHARD_STORED)
            delay = rng.uniform(0.0, 0.5)
            moment = f"{delay:.2f} s after a shard was stored"
        else:
            wait_for(proc, log, FLOW_STARTS)
            delay = rng.uniform(0.05, 0.6) * in_flow
            moment = f"{delay:.1f} s into the flow"
        proc.join(delay)
        if not proc.is_alive():  # it finished first: nothing left to interrupt
            assert proc.exitcode == 0, log.read_text()
            history.append(("finished", len(FEATURES)))
            break
        proc.kill()
        proc.join(30)
        kills += 1
        history.append((f"killed {moment}", len(check_consistent(warehouse, expected))))
    print("features stored after each kill:", history,
          f"(clean run: {before_flow:.1f} s before its flow, {in_flow:.1f} s in it)")
    assert kills >= 1, history

    final = relabel_proc.start(procs, argv, tmp_path / "log-final")
    final.join(180)
    assert final.exitcode == 0, (tmp_path / "log-final").read_text()

    assert_same_rows(contents(warehouse), expected)  # exactly the clean run's rows
    with Warehouse(warehouse) as wh:
        runs = wh.query("SELECT status, count(*) AS n FROM run GROUP BY status")
        shards = wh.query("SELECT count(*) AS n FROM shard_done")["n"][0]
    statuses = dict(runs.iter_rows())
    assert shards == len(FEATURES) // SHARD
    # Killed runs are marked interrupted by the next one (a run killed after its last shard leaves
    # the final run nothing to do, and that one records no run row).
    assert set(statuses) <= {"completed", "interrupted"}, statuses
