"""Scale-out: warm shard workers on a work pool label the shards of one request, writing Parquet
folders; `merge_shards` upserts them through the single writer.

    scale_out(request, out_dir)                  # N `shard-worker` runs lease the shards, then merge
    scale_out(request, out_dir, launcher="subflow")   # the same shards in this process
    merge_shards(out_dir, warehouse)             # idempotent: merging twice changes nothing

A `shard-worker` run is a long-lived flow run on any worker of the pool: it loads the model and
SAE once, then claims shard after shard from a board on the shared `out_dir`
(selfexplain.leases) and runs each as a `relabel` child run, until none is left. A worker that
dies leaves a lease that goes stale; another worker (or a fresh worker run) takes the shard over.
Nothing depends on Prefect redelivering work, so a server restart loses nothing either.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from flows.relabel import relabel, with_statistics
from selfexplain.leases import ShardBoard
from selfexplain.runlock import writer_lock
from selfexplain.saes import check_features
from tasks.artifacts import artifact_key, start_progress, update_progress
from tasks.request import RelabelRequest, compact, split_shards
from tasks.sae import load_sae_info
from tasks.store import heartbeat, heartbeat_path, merge_folder, publish_snapshot

BOARDS = ".scale-out"
"""Under out_dir: one shard board per scale-out run."""


def shard_folders(out_dir: str) -> list[Path]:
    """Finished folders (run rows first, then shards); `.partial` ones are still being written."""
    folders = [p for p in Path(out_dir).glob("*/*") if p.is_dir() and not p.name.endswith(".partial")
               and not p.parent.name.startswith(".")]
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


@flow(name="shard-worker", log_prints=True)
def shard_worker(board: str, out_dir: str, poll_s: float = 2.0) -> dict[str, int]:
    """Claim shards from `board` and label each as a `relabel` child run, in this one process
    (the model and SAE stay loaded between shards), until every shard is done or failed.

    Waits while other live workers hold the last shards, so that it takes one over at once if its
    worker dies. A shard that raises is marked failed with its reason and fails this run."""
    shards = ShardBoard(board)
    me = flow_run.id or f"local-{uuid.uuid4().hex[:8]}"
    labelled = 0
    with heartbeat(out_dir, me):  # the parent tells a dead worker run from a busy one by this
        while True:
            claim = shards.claim(me)
            if claim is None:
                if shards.status().settled:
                    break
                time.sleep(poll_s)
                continue
            part = RelabelRequest.model_validate(shards.parts[claim.index])
            with shards.held(claim):
                try:
                    relabel(part)
                except Exception as err:
                    shards.fail(claim, f"{type(err).__name__}: {err}".splitlines()[0][:500])
                    raise
            shards.finish(claim)
            labelled += 1
            print(f"shard {claim.index + 1}/{len(shards.parts)} (features {part.features}) "
                  f"done{'' if claim.attempt == 1 else f' (attempt {claim.attempt})'}")
    return {"shards": labelled}


@flow(name="scale-out", log_prints=True)
def scale_out(request: RelabelRequest, out_dir: str, launcher: str = "workers",
              deployment: str = "shard-worker/shard-worker", worker_runs: int = 2,
              shards_per_run: int = 4, stale_after_s: float = 60.0, max_attempts: int = 3,
              poll_s: float = 2.0) -> dict[str, int]:
    """Split the request into shards labelled into Parquet under `out_dir`, then merge them.

    launcher `workers`: `worker_runs` runs of the `shard-worker` deployment on a work pool
    (workers anywhere that share `out_dir`) lease the shards; they show under this run in the UI,
    with a progress artifact. A shard whose worker died (its lease silent for `stale_after_s`) is
    taken over by another worker; a worker run that crashed, or went silent, is marked Crashed and
    replaced while shards are left. Parquet is written atomically, so nothing is lost or doubled.
    A shard that *fails* (bad input) fails the scale-out at once with its reason. A shard lost
    `max_attempts` times fails it too. `subflow`: the same shards in this process.

    Each leased part is `shards_per_run` shards of `request.shard_size` (one `relabel` child run
    labelling them one after another): a child run costs about 2 s of its own (preflight, held-out
    scoring, artifacts, Prefect's bookkeeping), so parts of one 8-latent shard made a latent cost
    1.5x what it costs in one process; a lost worker costs its part's redo.
    """
    if shards_per_run < 1:
        raise ValueError(f"shards_per_run {shards_per_run}: at least 1")
    if launcher not in ("workers", "subflow"):
        raise ValueError(f"launcher {launcher!r}: `workers` or `subflow`")
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
    print(f"scale-out {sae.release}/{sae.sae_id}: {len(features)} features in {len(parts)} "
          f"shards ({launcher}{f', {worker_runs} worker runs' if launcher == 'workers' else ''})")
    if launcher == "subflow":
        for done, part in enumerate(parts, 1):
            relabel(part)
            update_progress(progress, done, len(parts))
    else:
        board = ShardBoard.create(Path(out_dir, BOARDS, flow_run.id or uuid.uuid4().hex),
                                  [p.model_dump() for p in parts], stale_after_s=stale_after_s,
                                  max_attempts=max_attempts)
        WorkerRuns(board, deployment, out_dir, progress, worker_runs=worker_runs,
                   poll_s=poll_s).wait()
    return merge_shards(out_dir, request.warehouse)


class ShardFailed(RuntimeError):
    """A shard run failed on its own (bad input, a bug): retrying would fail the same way."""


class WorkerRuns:
    """The worker runs of one scale-out: submit them, watch the board, replace the dead ones."""

    def __init__(self, board: ShardBoard, deployment: str, out_dir: str, progress, *,
                 worker_runs: int, poll_s: float, server_grace_s: float = 300.0) -> None:
        if worker_runs < 1:
            raise ValueError(f"worker_runs {worker_runs}: at least one")
        self.board, self.deployment, self.out_dir = board, deployment, out_dir
        self.progress, self.poll_s, self.server_grace_s = progress, poll_s, server_grace_s
        self.stale_after_s = board.stale_after_s
        self.target = min(worker_runs, len(board.parts))
        self.max_submissions = self.target + board.max_attempts * len(board.parts)
        """Bounds the replacements: every lost worker run costs a shard at most one attempt."""
        self.runs: list[object] = []
        """Flow run ids submitted, in order."""
        self.settled: set[object] = set()
        """Runs known to be over (or marked Crashed by us)."""

    def submit(self) -> None:
        if len(self.runs) >= self.max_submissions:
            raise RuntimeError(f"{len(self.runs)} worker runs submitted and none left alive; "
                               f"see the crashed `shard-worker` runs in the UI")
        run = self._api(lambda: run_deployment(
            self.deployment, timeout=0,
            parameters={"board": str(self.board.folder), "out_dir": self.out_dir}))
        self.runs.append(run.id)

    def wait(self) -> None:
        for _ in range(self.target):
            self.submit()
        reported = -1
        while True:
            status = self.board.status()
            if status.failed:
                index, reason = next(iter(status.failed.items()))
                raise ShardFailed(f"shard {index + 1}/{status.n_shards} (features "
                                  f"{self.board.parts[index]['features']}) failed: {reason}")
            if len(status.done) != reported:
                reported = len(status.done)
                self._api(lambda: update_progress(self.progress, reported, status.n_shards))
            if status.settled:
                self._cancel_waiting()
                return
            alive = self._alive()
            left = status.n_shards - len(status.done)
            for _ in range(min(self.target, left) - alive):
                print(f"{alive} worker runs alive, {left} shards left: submitting another")
                self.submit()
            time.sleep(self.poll_s)

    def _alive(self) -> int:
        """Worker runs that are scheduled, or pending/running with a fresh heartbeat. A run that
        failed without marking a shard failed (an import error, bad parameters) fails us."""
        alive = 0
        for run_id in [r for r in self.runs if r not in self.settled]:
            run = self._api(lambda run_id=run_id: self._read(run_id))
            state = run.state
            if state is not None and state.is_failed():
                self.settled.add(run_id)
                if not self.board.status().failed:
                    raise ShardFailed(f"worker run {run.name} failed: {state.message}")
            elif state is not None and state.is_final():
                self.settled.add(run_id)
            elif self._dead(run):
                self.settled.add(run_id)
                self._api(lambda run=run: self._crash(run))
                print(f"worker run {run.name} lost (no heartbeat for {self.stale_after_s:g} s)")
            else:
                alive += 1
        return alive

    def _cancel_waiting(self) -> None:
        """Every shard is done: worker runs still queued behind busy workers are not needed."""
        from prefect.states import Cancelled

        for run_id in [r for r in self.runs if r not in self.settled]:
            run = self._api(lambda run_id=run_id: self._read(run_id))
            if run.state is not None and run.state.is_scheduled():
                with get_client(sync_client=True) as client:
                    self._api(lambda: client.set_flow_run_state(
                        run_id, Cancelled(message="every shard was done by other workers")))

    def _dead(self, run) -> bool:
        """Pending or running with no heartbeat for stale_after_s (a scheduled run waits for a
        free worker, however long; a finished one is `_alive`'s to judge)."""
        state = run.state
        if state is None or not (state.is_running() or state.is_pending()):
            return False
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
            client.set_flow_run_state(run.id, Crashed(message="worker lost: no heartbeat; its "
                                                      "shard goes to another worker"), force=True)

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
