"""Scale-out for real: a Prefect server, a process work pool and workers in their own processes
run warm `shard-worker` runs over the tiny model's shards. One worker is killed mid-shard and the
other takes its shard over; the server is restarted mid-run and the run still finishes; in both
the merged warehouse equals a single-process run row for row. A shard with bad input fails once,
with its reason."""

from __future__ import annotations

import threading
import time

import polars as pl
import pytest

from flows.cluster import SHARD_DEPLOYMENT, SHARD_FLOW, LocalCluster
from flows.merge import BOARDS, ShardFailed, scale_out
from flows.relabel import relabel
from selfexplain.leases import ShardBoard
from selfexplain.warehouse_read import open_reader
from tasks.request import RelabelRequest

pytestmark = pytest.mark.cluster

DEPLOYMENT = f"{SHARD_FLOW}/{SHARD_DEPLOYMENT}"

COMPARED = {
    "label": ["feature", "label", "top_labels", "recovered_token", "scale", "composite",
              "max_selfsim", "max_roundtrip", "failed", "skipped"],
    "explanation": ["feature", "prompt", "candidate", "text", "scale", "sample", "rank", "chosen"],
    "scale_metric": ["feature", "prompt", "scale", "selfsim", "entropy"],
}
"""Everything but run ids, timings and timestamps (which differ between any two runs)."""


def content(warehouse: str) -> dict[str, pl.DataFrame]:
    with open_reader(warehouse) as wh:
        return {table: wh.query(f"SELECT {', '.join(cols)} FROM {table}")  # constant names
                .sort(cols[:3]) for table, cols in COMPARED.items()}


def running_on(cluster: LocalCluster, worker: int, client) -> bool:
    """Whether worker `worker` is executing a shard right now (a flow run in RUNNING whose
    process is one of the worker's)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, \
        FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
        type=FlowRunFilterStateType(any_=[StateType.RUNNING]))))
    pids = cluster.worker_pids(worker)
    return any(run.infrastructure_pid and int(str(run.infrastructure_pid).rsplit(":", 1)[-1])
               in pids for run in runs)


def leased_by(out_dir, pids: set[int]) -> bool:
    """Whether one of these processes holds a fresh lease on some board right now."""
    for board in boards(out_dir):
        for index in board.status().leased:
            holder = board.holder(index)
            if holder is not None and holder.get("pid") in pids:
                return True
    return False


def boards(out_dir) -> list[ShardBoard]:
    return [ShardBoard(p) for p in sorted((out_dir / BOARDS).glob("*"))
            if (p / "plan.json").exists()]


def in_background(cluster: LocalCluster, request: RelabelRequest, out_dir, **kw):
    """The scale-out flow in a thread (as the CLI's process would run it); returns the thread
    and the dict its summary or error lands in."""
    outcome: dict[str, object] = {}

    def parent() -> None:  # settings are context-local: a thread enters them again
        from prefect.settings import PREFECT_API_URL, temporary_settings

        try:
            with temporary_settings({PREFECT_API_URL: cluster.api_url}):
                outcome["summary"] = scale_out(request, str(out_dir), deployment=DEPLOYMENT,
                                               poll_s=1, **kw)
        except BaseException as err:  # reported by the test
            outcome["error"] = err

    thread = threading.Thread(target=parent)
    thread.start()
    return thread, outcome


def wait_until(condition, thread, outcome, what: str, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        assert thread.is_alive(), outcome
        time.sleep(0.2)


def single_process(tmp_path, tiny_model_dir, tiny_sae_dir, fast,
                   features: str) -> tuple[dict, str]:
    """The request's common fields and the warehouse of the same request run by `relabel` in
    this process: what every scale-out here must equal."""
    common = dict(collect=False, model=tiny_model_dir, sae=str(tiny_sae_dir), features=features,
                  shard_size=2, scales="0:2:3", samples=1, overrides=fast)
    single = str(tmp_path / "single.duckdb")
    relabel(RelabelRequest(warehouse=single, **common))
    return common, single


def assert_same_content(expected_warehouse: str, got_warehouse: str) -> None:
    expected, got = content(expected_warehouse), content(got_warehouse)
    for table in COMPARED:
        assert got[table].height == expected[table].height > 0, table
        assert got[table].equals(expected[table]), table


def test_two_workers_one_killed_mid_shard_merge_equals_single_process(
        tmp_path, tiny_model_dir, tiny_sae_dir, fast):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    common, single = single_process(tmp_path, tiny_model_dir, tiny_sae_dir, fast, "0-15")

    merged = str(tmp_path / "merged.duckdb")
    request = RelabelRequest(warehouse=merged, **common)
    out_dir = tmp_path / "shards"
    with LocalCluster(2, home=tmp_path / "prefect") as cluster, \
            temporary_settings({PREFECT_API_URL: cluster.api_url}):
        thread, outcome = in_background(cluster, request, out_dir, worker_runs=2,
                                        shards_per_run=1, stale_after_s=20)
        with get_client(sync_client=True) as client:
            # a lease of worker 0's own (any lease at all raced: worker 1's, or worker 0
            # between shards, and the kill then lost nothing: 1 of 2 full-suite runs here)
            wait_until(lambda: running_on(cluster, 0, client)
                       and leased_by(out_dir, cluster.worker_pids(0)), thread, outcome,
                       "worker 0 never started a shard")
        cluster.kill_worker(0)  # worker and its shard-worker run, mid-shard
        thread.join(600)
        assert not thread.is_alive()
        assert "error" not in outcome, outcome.get("error")

        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs()
        worker_states = [r.state.type.value for r in runs if r.deployment_id]
        assert "CRASHED" in worker_states  # the killed one, marked so by the parent
        assert worker_states.count("COMPLETED") >= 1
        (board,) = boards(out_dir)
        assert board.status().settled and len(board.status().done) == 8
        owners = [board.done_by(i) for i in range(8)]
        # warm: a worker run labels many shards in one process (8 shards, at most 3 runs)
        assert len(set(owners)) <= 3 and max(owners.count(o) for o in owners) >= 3
        assert sum(board.attempts(i) for i in range(8)) >= 1  # the killed worker's shard

        # a shard with bad input fails once, with its reason, and is not resubmitted
        bad = RelabelRequest(warehouse=str(tmp_path / "bad.duckdb"),
                             **{**common, "model": str(tmp_path / "no-such-model")})
        with pytest.raises(ShardFailed, match="no-such-model"):
            scale_out.fn(bad, str(tmp_path / "bad-shards"), deployment=DEPLOYMENT, poll_s=1,
                         worker_runs=1, shards_per_run=1)

    assert outcome["summary"]["folders"] >= 8
    assert_same_content(single, merged)


def test_server_restarted_mid_run_finishes_with_nothing_lost_or_doubled(
        tmp_path, tiny_model_dir, tiny_sae_dir, fast):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    common, single = single_process(tmp_path, tiny_model_dir, tiny_sae_dir, fast, "0-11")

    merged = str(tmp_path / "merged.duckdb")
    out_dir = tmp_path / "shards"
    with LocalCluster(1, home=tmp_path / "prefect") as cluster, \
            temporary_settings({PREFECT_API_URL: cluster.api_url}):
        thread, outcome = in_background(cluster, RelabelRequest(warehouse=merged, **common),
                                        out_dir, worker_runs=1, shards_per_run=1,
                                        stale_after_s=20)
        wait_until(lambda: boards(out_dir) and boards(out_dir)[0].status().done, thread,
                   outcome, "no shard finished")
        assert len(boards(out_dir)[0].status().done) < 6  # the restart lands mid-run
        cluster.restart_server(down_s=3)
        thread.join(600)
        assert not thread.is_alive()
        assert "error" not in outcome, outcome.get("error")
        (board,) = boards(out_dir)
        assert board.status().settled and len(board.status().done) == 6

    assert_same_content(single, merged)
