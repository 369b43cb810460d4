"""Scale-out in miniature: shards run elsewhere (separate flow runs or deployments on a work pool)
write Parquet folders; `merge_shards` upserts them through the single writer.

    scale_out(request, launcher="deployment")   # one `run_deployment` per shard, then merge
    merge_shards(out_dir, warehouse)            # idempotent: merging twice changes nothing
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from flows.relabel import relabel, with_statistics
from selfexplain.runlock import writer_lock
from selfexplain.saes import check_features
from tasks.artifacts import artifact_key, start_progress, update_progress
from tasks.request import RelabelRequest, compact, split_shards
from tasks.sae import load_sae_info
from tasks.store import heartbeat_path, merge_folder, publish_snapshot


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
              deployment: str = "relabel/relabel-shard", shards_per_run: int = 1,
              stale_after_s: float = 60.0, max_attempts: int = 3,
              poll_s: float = 2.0) -> dict[str, int]:
    """Split the request into shard runs writing Parquet to `out_dir`, then merge them.

    launcher `deployment`: `run_deployment` per shard on a work pool (workers anywhere that share
    `out_dir`); the child runs show under this run in the UI, with a progress artifact. A shard
    whose run crashed, or whose heartbeat (tasks.store.heartbeat) went silent for `stale_after_s`
    because its worker died, is marked Crashed and submitted again (up to `max_attempts`): its
    Parquet is written atomically, so nothing is lost or doubled. A shard that *fails* (bad input)
    fails the scale-out at once with its reason. `subflow`: the same runs in this process.
    """
    sae = with_statistics(request, load_sae_info(request.sae))  # once, before the shards
    features = request.feature_list(sae.d_sae)
    check_features(features, sae.d_sae)
    groups = split_shards(features, request.shard_size * shards_per_run)
    # `--precision auto` resolved here, once: a shard on a worker with other hardware must label
    # with the same settings (precision is in the settings hash), not pick its own
    overrides = {**request.overrides, "precision": request.config().precision}
    parts = [request.model_copy(update={"features": compact(g), "all_features": False,
                                        "out_dir": out_dir, "overrides": overrides})
             for g in groups]
    progress = start_progress(artifact_key("scale-out", sae.release, sae.sae_id), len(parts))
    print(f"scale-out {sae.release}/{sae.sae_id}: {len(features)} features in {len(parts)} shard "
          f"runs ({launcher})")
    if launcher == "subflow":
        for done, part in enumerate(parts, 1):
            relabel(part)
            update_progress(progress, done, len(parts))
    else:
        ShardRuns(parts, deployment, out_dir, progress, stale_after_s=stale_after_s,
                  max_attempts=max_attempts, poll_s=poll_s).wait()
    return merge_shards(out_dir, request.warehouse)


class ShardFailed(RuntimeError):
    """A shard run failed on its own (bad input, a bug): retrying would fail the same way."""


class ShardRuns:
    """The shard runs of one scale-out: submit, watch, resubmit the dead ones."""

    def __init__(self, parts: list[RelabelRequest], deployment: str, out_dir: str,
                 progress, *, stale_after_s: float, max_attempts: int, poll_s: float,
                 server_grace_s: float = 300.0) -> None:
        self.parts, self.deployment, self.out_dir = parts, deployment, out_dir
        self.progress = progress
        self.stale_after_s, self.max_attempts, self.poll_s = stale_after_s, max_attempts, poll_s
        self.server_grace_s = server_grace_s
        self.runs: dict[int, object] = {}
        self.attempts: dict[int, int] = {}

    def submit(self, i: int) -> None:
        run = self._api(lambda: run_deployment(
            self.deployment, parameters={"request": self.parts[i].model_dump()}, timeout=0))
        self.runs[i] = run.id
        self.attempts[i] = self.attempts.get(i, 0) + 1

    def wait(self) -> None:
        for i in range(len(self.parts)):
            self.submit(i)
        done: set[int] = set()
        while len(done) < len(self.parts):
            for i in [i for i in range(len(self.parts)) if i not in done]:
                run = self._api(lambda i=i: self._read(self.runs[i]))
                state = run.state
                what = f"shard {i + 1}/{len(self.parts)} (features {self.parts[i].features})"
                if state is not None and state.is_completed():
                    done.add(i)
                    self._api(lambda: update_progress(self.progress, len(done), len(self.parts)))
                    print(f"{what} done ({run.name})")
                elif state is not None and state.is_failed():
                    raise ShardFailed(f"{what} failed in run {run.name}: {state.message}")
                elif self._dead(run):
                    if self.attempts[i] >= self.max_attempts:
                        raise RuntimeError(f"{what} died {self.attempts[i]} times; last run "
                                           f"{run.name} ended {state.type.value if state else '?'}")
                    reason = state.type.value if state and state.is_final() else "silent worker"
                    self._api(lambda run=run: self._crash(run))
                    print(f"{what}: run {run.name} lost ({reason}); submitting it again")
                    self.submit(i)
            if len(done) < len(self.parts):
                time.sleep(self.poll_s)

    def _dead(self, run) -> bool:
        """Crashed or cancelled, or running/pending with no heartbeat for stale_after_s."""
        state = run.state
        if state is None:
            return False
        if state.is_crashed() or state.is_cancelled():
            return True
        if not (state.is_running() or state.is_pending()):
            return False  # scheduled: waits for a free worker, however long
        beat = heartbeat_path(self.out_dir, str(run.id))
        since = beat.stat().st_mtime if beat.exists() else state.timestamp.timestamp()
        return time.time() - since > self.stale_after_s

    @staticmethod
    def _read(flow_run_id):
        with get_client(sync_client=True) as client:
            return client.read_flow_run(flow_run_id)

    @staticmethod
    def _crash(run) -> None:
        """Mark a lost run Crashed, so the UI does not show it running forever."""
        from prefect.states import Crashed

        if run.state is not None and run.state.is_final():
            return
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Crashed(message="worker lost: no heartbeat; the "
                                                      "shard was submitted again"), force=True)

    def _api(self, call):
        """`call()`, retried while the Prefect server is unreachable (restarting) for up to
        server_grace_s; other errors pass through."""
        import httpx

        deadline = time.monotonic() + self.server_grace_s
        while True:
            try:
                return call()
            except (httpx.TransportError, OSError) as err:
                if time.monotonic() > deadline:
                    raise
                print(f"Prefect server unreachable ({type(err).__name__}); retrying")
                time.sleep(min(5.0, self.poll_s * 2))
