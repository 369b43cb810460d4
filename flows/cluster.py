"""A Prefect cluster on this machine for scale-out: a server, a process work pool, N workers.

    with LocalCluster(workers=2) as cluster:   # `selfexplain scale-out` and `make scale-out`
        scale_out(request, out_dir, ...)       # run with PREFECT_API_URL = cluster.api_url

The `shard-worker` deployment is registered from this checkout (`flow.from_source` on the
repository folder, prefect.yaml's settings), so workers run the code they are started beside.
Each worker serves one `shard-worker` run at a time; that run keeps the model loaded across the
shards it leases (flows/merge.py).
Every process lives in its own process group and is stopped on exit; `kill_worker` kills one
worker and the flow run it is executing, as a machine failure would.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
POOL = "selfexplain-local"
SHARD_DEPLOYMENT = "shard-worker"
SHARD_FLOW = "shard-worker"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (Linux /proc), deepest last."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_tree(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    for pid in [process.pid, *_children(process.pid)]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig) if pid == process.pid else os.kill(pid, sig)


class LocalCluster:
    """Server (unless `api_url` names one already running), work pool, deployment, workers."""

    def __init__(self, workers: int = 2, *, home: str | Path | None = None,
                 api_url: str | None = None, port: int | None = None,
                 query_seconds: float = 2.0, log_dir: str | Path | None = None) -> None:
        if workers < 1:
            raise ValueError("a scale-out needs at least one worker")
        self.n_workers = workers
        self.home = Path(home or ROOT / ".prefect-scale-out").resolve()
        self.log_dir = Path(log_dir or self.home / "logs")
        self.port = port or free_port()
        self.api_url = api_url or f"http://127.0.0.1:{self.port}/api"
        self.own_server = api_url is None
        self.query_seconds = query_seconds
        self.server: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    # -- lifecycle -----------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return {**os.environ, "PREFECT_HOME": str(self.home), "PREFECT_API_URL": self.api_url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                "SELFEXPLAIN_ROOT": str(ROOT),
                "PREFECT_WORKER_QUERY_SECONDS": str(self.query_seconds),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                            os.environ.get("PYTHONPATH")]))}

    def _spawn(self, args: list[str], log: str, **env: str) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(args, env={**self.env(), **env}, cwd=ROOT, start_new_session=True,
                                stdout=open(self.log_dir / log, "ab"), stderr=subprocess.STDOUT)

    def __enter__(self) -> "LocalCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.own_server:
            self.start_server()
        self.wait_for_server()
        self.deploy()
        for i in range(self.n_workers):
            self.start_worker(i)

    def start_server(self) -> subprocess.Popen:
        """The Prefect server on this cluster's port; its database lives in the cluster's home,
        so a restarted server knows every run the last one did."""
        self.server = self._spawn([sys.executable, "-m", "prefect", "server", "start", "--host",
                                   "127.0.0.1", "--port", str(self.port)], "server.log")
        return self.server

    def restart_server(self, down_s: float = 0.0) -> None:
        """Stop the server (SIGTERM, as an upgrade or a reboot would), stay down `down_s`
        seconds, start it again on the same port and wait until it answers."""
        if not self.own_server:
            raise RuntimeError("this cluster did not start the server it uses")
        self._stop_server()
        time.sleep(down_s)
        self.start_server()
        self.wait_for_server()

    def _stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            _kill_tree(self.server, signal.SIGTERM)
            try:
                self.server.wait(15)
            except subprocess.TimeoutExpired:
                _kill_tree(self.server)
                self.server.wait()

    def start_worker(self, i: int) -> subprocess.Popen:
        """Worker i, running one shard-worker run at a time with its share of the cores (N
        workers on one machine would otherwise each start as many threads as there are cores)."""
        threads = max(1, (os.cpu_count() or 1) // self.n_workers)
        worker = self._spawn([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL,
                              "--type", "process", "--limit", "1", "--name", f"worker-{i}"],
                             f"worker-{i}.log", OMP_NUM_THREADS=str(threads))
        if i < len(self.workers):
            self.workers[i] = worker
        else:
            self.workers.append(worker)
        return worker

    def wait_for_server(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(self.api_url + "/health", timeout=2)
                return
            except OSError:
                if self.server is not None and self.server.poll() is not None:
                    raise RuntimeError(f"the Prefect server exited; see {self.log_dir}/server.log")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no Prefect server at {self.api_url} after {timeout_s:.0f} s")
                time.sleep(0.5)

    def deploy(self) -> str:
        """The process work pool and the `shard-worker` deployment (prefect.yaml's settings),
        from this checkout. Idempotent."""
        from prefect import flow
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.exceptions import ObjectAlreadyExists
        from prefect.settings import PREFECT_API_URL, temporary_settings

        spec = next(d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
                    if d["name"] == SHARD_DEPLOYMENT)
        with temporary_settings({PREFECT_API_URL: self.api_url}):
            with get_client(sync_client=True) as client:
                with contextlib.suppress(ObjectAlreadyExists):
                    client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
            shard_flow = flow.from_source(source=str(ROOT), entrypoint=spec["entrypoint"])
            with contextlib.redirect_stdout(io.StringIO()):  # Prefect prints "next steps"
                return str(shard_flow.deploy(
                    name=SHARD_DEPLOYMENT, work_pool_name=POOL, build=False, push=False,
                    description=spec.get("description"), tags=spec.get("tags"),
                    parameters=spec.get("parameters") or {},
                    concurrency_limit=spec.get("concurrency_limit")))

    def kill_worker(self, i: int) -> None:
        """SIGKILL worker i and everything it started (the flow run it executes)."""
        _kill_tree(self.workers[i])
        self.workers[i].wait()

    def worker_pids(self, i: int) -> set[int]:
        return {self.workers[i].pid, *_children(self.workers[i].pid)}

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                _kill_tree(worker, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for worker in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(max(0.1, deadline - time.monotonic()))
            if worker.poll() is None:
                _kill_tree(worker)
                worker.wait()
        self._stop_server()


def run_scale_out(request, out_dir: str, *, workers: int, api_url: str | None = None,
                  worker_runs: int | None = None, shards_per_run: int = 4,
                  stale_after_s: float = 60.0, announce=print) -> dict[str, int]:
    """The `scale-out` flow on a local cluster of `workers` (or the server at `api_url` and its
    workers), with `worker_runs` shard-worker runs (default: one per worker): check the request
    first (the SAE, features, warehouse and model, in seconds), then start it, run the flow
    against it, stop it. `announce` gets the progress lines."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.merge import scale_out
    from tasks.preflight import preflight

    preflight(request)

    cluster = LocalCluster(workers, api_url=api_url)
    announce(f"starting {'the Prefect server and ' if cluster.own_server else ''}{workers} "
             f"workers (pool {POOL}; logs in {cluster.log_dir}) ...")
    began = time.perf_counter()
    with cluster, temporary_settings({PREFECT_API_URL: cluster.api_url}):
        announce(f"cluster ready in {time.perf_counter() - began:.1f} s")
        announce(f"Prefect UI: {cluster.api_url.removesuffix('/api')}  (runs -> scale-out: "
                 "child runs and the progress artifact)")
        try:
            return scale_out(request, out_dir, launcher="workers",
                             worker_runs=worker_runs or workers,
                             shards_per_run=shards_per_run,
                             deployment=f"{SHARD_FLOW}/{SHARD_DEPLOYMENT}",
                             stale_after_s=stale_after_s)
        finally:
            drain_to_server()


def drain_to_server(timeout_s: float = 15.0) -> None:
    """Send this process's queued logs and events while the server still runs. Left queued, they
    are retried against the stopped server at exit: over a minute of "Error logging to API"."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            service.drain_all(timeout=timeout_s)
