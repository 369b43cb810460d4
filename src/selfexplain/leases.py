"""A scale-out's shards on a shared folder, leased to long-lived workers.

The folder (`<out_dir>/.scale-out/<run id>/`) holds the plan and one small file per shard state:

    plan.json             {"parts": [<shard request>, ...], "stale_after_s": ..., "max_attempts": ...}
    shard-0003.lease      held by a worker; its mtime is the worker's heartbeat
    shard-0003.dead-<id>  a lease whose worker went silent (one per lost attempt)
    shard-0003.done       the shard's rows are written (its Parquet is atomic)
    shard-0003.failed     the shard failed on its own (bad input): the reason, for the parent

Claims are made one at a time under an exclusive `flock` of `claims.lock` (released by the kernel
when its holder dies, so it never goes stale; NFSv4 and CephFS carry it between machines): without
it, a worker that found a lease stale could rename away the fresh lease another worker had just
created in its place. Inside, a lease is created with O_CREAT|O_EXCL all the same.
Nothing here knows Prefect: workers and the parent are flows that call it.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

PLAN = "plan.json"
TOUCH_SECONDS = 5.0
"""How often a held lease (or a heartbeat file) is touched."""


class Claim(NamedTuple):
    """One shard leased to one worker."""

    index: int
    """The shard's position in the plan."""
    lease: Path
    """The lease file the worker keeps touching."""
    attempt: int
    """1 for the first worker to take the shard, 2 after one lost worker, ..."""
    owner: str
    """Who holds it (a shard-worker flow run id)."""


class BoardStatus(NamedTuple):
    """What the parent reads on each poll."""

    n_shards: int
    done: list[int]
    failed: dict[int, str]
    """shard index -> the reason it failed."""
    leased: list[int]
    """Shards held by a worker whose lease is fresh."""

    @property
    def settled(self) -> bool:
        """Every shard done or failed: nothing is left for a worker."""
        return len(self.done) + len(self.failed) == self.n_shards


@contextmanager
def kept_touched(path: Path, every_s: float = TOUCH_SECONDS) -> Iterator[Path]:
    """Touch `path` every `every_s` seconds while the block runs (a daemon thread, stopped and
    joined in `finally`): its mtime tells another process on any machine that we are alive."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                path.touch()
            except OSError:  # a full or vanished disk fails the work's own writes, not this
                pass
            if stop.wait(every_s):
                return

    thread = threading.Thread(target=beat, name=f"touch-{path.name}", daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        thread.join()


class ShardBoard:
    """The shards of one scale-out and who holds them."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        plan = json.loads((self.folder / PLAN).read_text())
        self.parts: list[dict[str, Any]] = plan["parts"]
        self.stale_after_s: float = float(plan["stale_after_s"])
        self.max_attempts: int = int(plan["max_attempts"])

    @classmethod
    def create(cls, folder: str | Path, parts: list[dict[str, Any]], *, stale_after_s: float,
               max_attempts: int) -> "ShardBoard":
        """Write the plan (atomically: a worker never reads half of it) and open the board."""
        if not parts:
            raise ValueError("a shard board needs at least one shard")
        if stale_after_s <= 2 * TOUCH_SECONDS:
            raise ValueError(f"stale_after_s {stale_after_s:g}: must exceed twice the "
                             f"{TOUCH_SECONDS:g} s touch interval, or live workers look dead")
        if max_attempts < 1:
            raise ValueError(f"max_attempts {max_attempts}: at least 1")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{PLAN}.{uuid.uuid4().hex}"
        partial.write_text(json.dumps({"parts": parts, "stale_after_s": stale_after_s,
                                       "max_attempts": max_attempts}))
        partial.replace(folder / PLAN)
        return cls(folder)

    # -- files -------------------------------------------------------------------------------
    def _path(self, index: int, suffix: str) -> Path:
        return self.folder / f"shard-{index:04d}.{suffix}"

    def _is_done(self, index: int) -> bool:
        return self._path(index, "done").exists()

    def _failure(self, index: int) -> str | None:
        try:
            return self._path(index, "failed").read_text()
        except FileNotFoundError:
            return None

    def _fresh(self, lease: Path) -> bool | None:
        """True: held by a live worker; False: stale; None: no lease."""
        try:
            return time.time() - lease.stat().st_mtime <= self.stale_after_s
        except FileNotFoundError:
            return None

    def attempts(self, index: int) -> int:
        """Workers lost on this shard so far."""
        return len(list(self.folder.glob(f"shard-{index:04d}.dead-*")))

    # -- workers -----------------------------------------------------------------------------
    def claim(self, owner: str) -> Claim | None:
        """Lease the first shard that is neither done, failed nor held by a live worker; None
        when there is none right now. A shard whose workers died `max_attempts` times is marked
        failed instead of being leased again."""
        fd = os.open(self.folder / "claims.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:  # a fresh open file per call: threads of one process exclude each other too
            fcntl.flock(fd, fcntl.LOCK_EX)
            return self._claim(owner)
        finally:
            os.close(fd)  # releases the lock

    def _claim(self, owner: str) -> Claim | None:
        for index in range(len(self.parts)):
            if self._is_done(index) or self._failure(index) is not None:
                continue
            lease = self._path(index, "lease")
            fresh = self._fresh(lease)
            if fresh:
                continue
            if fresh is False:  # its worker went silent: take the shard over
                try:
                    lease.rename(self._path(index, f"dead-{uuid.uuid4().hex[:12]}"))
                except FileNotFoundError:  # its slow worker finished it meanwhile
                    continue
            lost = self.attempts(index)
            if lost >= self.max_attempts:
                self._mark(index, "failed", f"its worker died {lost} times (no heartbeat for "
                           f"{self.stale_after_s:g} s each time)")
                continue
            try:
                fd = os.open(lease, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as out:
                out.write(json.dumps({"owner": owner, "attempt": lost + 1, "pid": os.getpid()}))
            if self._is_done(index):  # finished by its previous holder in the meantime
                lease.unlink(missing_ok=True)
                continue
            return Claim(index, lease, lost + 1, owner)
        return None

    @contextmanager
    def held(self, claim: Claim) -> Iterator[Claim]:
        """Keep the claim's lease fresh while the block runs."""
        with kept_touched(claim.lease, min(TOUCH_SECONDS, self.stale_after_s / 3)):
            yield claim

    def finish(self, claim: Claim) -> None:
        """The shard's rows are written: done first, then the lease goes."""
        self._mark(claim.index, "done", json.dumps({"owner": claim.owner,
                                                    "attempt": claim.attempt}))
        claim.lease.unlink(missing_ok=True)

    def fail(self, claim: Claim, reason: str) -> None:
        """The shard failed on its own: every other worker leaves it, the parent reports it."""
        self._mark(claim.index, "failed", reason)
        claim.lease.unlink(missing_ok=True)

    def _mark(self, index: int, state: str, text: str) -> None:
        partial = self.folder / f".shard-{index:04d}.{state}.{uuid.uuid4().hex}"
        partial.write_text(text)
        partial.replace(self._path(index, state))

    # -- the parent --------------------------------------------------------------------------
    def done_by(self, index: int) -> str | None:
        """The owner that finished shard `index` (None while it is not done)."""
        try:
            return json.loads(self._path(index, "done").read_text())["owner"]
        except FileNotFoundError:
            return None

    def holder(self, index: int) -> dict | None:
        """Who holds shard `index`'s lease ({"owner", "attempt", "pid"}); None when nobody does
        (or the lease is being written)."""
        try:
            return json.loads(self._path(index, "lease").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def status(self) -> BoardStatus:
        done, failed, leased = [], {}, []
        for index in range(len(self.parts)):
            if self._is_done(index):
                done.append(index)
            elif (reason := self._failure(index)) is not None:
                failed[index] = reason
            elif self._fresh(self._path(index, "lease")):
                leased.append(index)
        return BoardStatus(len(self.parts), done, failed, leased)
