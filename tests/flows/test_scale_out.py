"""Scale-out for real: a Prefect server, a process work pool and two workers in their own
processes run the tiny model's shards; one worker is killed mid-shard, its shard is submitted
again and finished by the other, and the merged warehouse equals a single-process run row for row.
A shard with bad input fails once, with its reason."""

from __future__ import annotations

import threading
import time

import polars as pl
import pytest

from flows.cluster import SHARD_DEPLOYMENT, LocalCluster
from flows.merge import ShardFailed, scale_out
from flows.relabel import relabel
from selfexplain.warehouse_read import open_reader
from tasks.request import RelabelRequest

pytestmark = pytest.mark.cluster

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


def test_two_workers_one_killed_mid_shard_merge_equals_single_process(
        tmp_path, tiny_model_dir, tiny_sae_dir, fast):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    common = dict(collect=False, model=tiny_model_dir, sae=str(tiny_sae_dir), features="0-15", shard_size=4,
                  scales="0:2:3", samples=1, overrides=fast)
    single = str(tmp_path / "single.duckdb")
    relabel(RelabelRequest(warehouse=single, **common))

    merged = str(tmp_path / "merged.duckdb")
    request = RelabelRequest(warehouse=merged, **common)
    outcome: dict[str, object] = {}
    with LocalCluster(2, home=tmp_path / "prefect") as cluster, \
            temporary_settings({PREFECT_API_URL: cluster.api_url}):
        def parent() -> None:  # settings are context-local: a thread enters them again
            try:
                with temporary_settings({PREFECT_API_URL: cluster.api_url}):
                    outcome["summary"] = scale_out(
                        request, str(tmp_path / "shards"),
                        deployment=f"relabel/{SHARD_DEPLOYMENT}", stale_after_s=15, poll_s=1)
            except BaseException as err:  # reported below
                outcome["error"] = err

        thread = threading.Thread(target=parent)
        thread.start()
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 240
            while not running_on(cluster, 0, client):
                assert time.monotonic() < deadline, "worker 0 never started a shard"
                assert thread.is_alive(), outcome
                time.sleep(0.2)
        cluster.kill_worker(0)  # worker and its flow run, mid-shard
        thread.join(600)
        assert not thread.is_alive()
        assert "error" not in outcome, outcome.get("error")

        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs()
        shard_states = [r.state.type.value for r in runs if r.deployment_id]
        assert shard_states.count("COMPLETED") == 4  # every shard, one of them on its 2nd run
        assert "CRASHED" in shard_states  # the killed one, marked so by the parent

        # a shard with bad input fails once, with its reason, and is not resubmitted
        bad = RelabelRequest(warehouse=str(tmp_path / "bad.duckdb"),
                             **{**common, "model": str(tmp_path / "no-such-model")})
        with pytest.raises(ShardFailed, match="no-such-model"):
            scale_out.fn(bad, str(tmp_path / "bad-shards"),
                         deployment=f"relabel/{SHARD_DEPLOYMENT}", poll_s=1)

    assert outcome["summary"]["folders"] >= 4
    expected, got = content(single), content(merged)
    for table in COMPARED:
        assert got[table].height == expected[table].height > 0, table
        assert got[table].equals(expected[table]), table
