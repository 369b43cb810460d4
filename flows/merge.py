"""Scale-out in miniature: shards run elsewhere (separate flow runs or deployments on a work pool)
write Parquet folders; `merge_shards` upserts them through the single writer.

    scale_out(request, launcher="deployment")   # one `run_deployment` per shard, then merge
    merge_shards(out_dir, warehouse)            # idempotent: merging twice changes nothing
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.deployments import run_deployment

from flows.relabel import relabel
from selfexplain.runlock import writer_lock
from tasks.request import RelabelRequest, compact, split_shards
from tasks.sae import load_sae_info
from tasks.store import merge_folder, publish_snapshot


def shard_folders(out_dir: str) -> list[Path]:
    """Finished folders (run rows first, then shards); `.partial` ones are still being written."""
    folders = [p for p in Path(out_dir).glob("*/*") if p.is_dir() and not p.name.endswith(".partial")]
    return sorted(folders, key=lambda p: (p.parent.name, not p.name.startswith("run-"), p.name))


@flow(name="merge-shards", log_prints=True)
def merge_shards(out_dir: str, warehouse: str) -> dict[str, int]:
    """Upsert every Parquet folder under `out_dir` into the warehouse, one transaction each.
    Holds the warehouse's run lock: a relabel run writing there meanwhile makes it fail at once."""
    folders = shard_folders(out_dir)
    rows = 0
    with writer_lock(warehouse):
        for folder in folders:
            rows += sum(merge_folder(warehouse, str(folder)).values())
        publish_snapshot(warehouse)
    print(f"merged {len(folders)} folders ({rows} rows) from {out_dir} into {warehouse}")
    return {"folders": len(folders), "rows": rows}


@flow(name="scale-out", log_prints=True)
def scale_out(request: RelabelRequest, out_dir: str, launcher: str = "deployment",
              deployment: str = "relabel/relabel-shard", shards_per_run: int = 1) -> dict[str, int]:
    """Split the request into shard runs writing Parquet to `out_dir`, then merge them.

    launcher `deployment`: `run_deployment` per shard on a work pool (workers anywhere that share
    `out_dir`), waiting for all; `subflow`: the same runs in this process (tests, one machine).
    """
    sae = load_sae_info(request.sae)
    features = request.feature_list(sae.d_sae)
    groups = split_shards(features, request.shard_size * shards_per_run)
    parts = [request.model_copy(update={"features": compact(g), "all_features": False,
                                        "out_dir": out_dir}) for g in groups]
    if launcher == "subflow":
        for part in parts:
            relabel(part)
    else:
        runs = [run_deployment(deployment, parameters={"request": part.model_dump()}, timeout=0)
                for part in parts]
        for started in runs:  # wait for every shard run; a failed one fails the merge
            state = run_deployment_wait(started.id)
            if not state.is_completed():
                raise RuntimeError(f"shard run {started.name} ended {state.type.value}")
    return merge_shards(out_dir, request.warehouse)


def run_deployment_wait(flow_run_id, poll_s: float = 5.0):
    """Block until a flow run reaches a final state; return that state."""
    import time

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run.state
            time.sleep(poll_s)
