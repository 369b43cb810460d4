"""`selfexplain relabel` in a separate OS process that a test can SIGKILL.

Each run is a process forked from a forkserver that imported selfexplain, Prefect, torch and
transformers once (`multiprocessing` forkserver preload), so a run costs seconds, not the ~10 s of
imports a fresh interpreter pays. The child calls `cli.cli.main` (what the `selfexplain`
script runs) with its stdout and stderr in a log file, and exits with the command's status. It
talks to the session's Prefect test server (PREFECT_API_URL in the forkserver's environment).

`fault="kill-in-write:N"` makes the child SIGKILL itself in the middle of the N-th shard write:
after that transaction has upserted the shard's labels, before its metrics and shard_done rows and
before COMMIT.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: E402,F401  (preloaded for the children: the sweep plot)
import torch  # noqa: E402
import transformers.models.auto.tokenization_auto  # noqa: E402,F401
import transformers.models.llama.modeling_llama  # noqa: E402,F401

import flows.relabel  # noqa: E402,F401
import cli.cli  # noqa: E402
import cli.relabel  # noqa: E402,F401
import selfexplain.explain  # noqa: E402,F401
import tasks.explain  # noqa: E402,F401
from selfexplain.warehouse import Warehouse  # noqa: E402

CONTEXT = multiprocessing.get_context("forkserver")


@contextmanager
def forkserver(env: dict[str, str]):
    """Start the forkserver with `env` added to its environment and this module preloaded."""
    CONTEXT.set_forkserver_preload([__name__])
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    yield CONTEXT


def _kill_in_write(nth: int) -> None:
    """SIGKILL this process inside the nth shard write, between two upserts of one transaction."""
    real = Warehouse.upsert
    seen = {"n": 0}

    def upsert(self, table, frame):
        if table == "scale_metric":
            seen["n"] += 1
            if seen["n"] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(self, table, frame)

    Warehouse.upsert = upsert


def run_cli(argv: list[str], log: str, fault: str | None = None) -> None:
    """Child target: `selfexplain <argv>` with output in `log`; exits with its status."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    torch.set_num_threads(1)
    if fault is not None:
        kind, _, arg = fault.partition(":")
        assert kind == "kill-in-write", fault
        _kill_in_write(int(arg))
    code = 1
    try:
        code = cli.cli.main(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # skip interpreter teardown (Prefect's background threads)


def start(ctx, argv: list[str], log: Path, fault: str | None = None):
    proc = ctx.Process(target=run_cli, args=(argv, str(log), fault), daemon=True)
    proc.start()
    return proc
