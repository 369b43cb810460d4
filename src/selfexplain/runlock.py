"""One writer per warehouse: a lock file next to it, held for a whole relabel or merge run and
for every other write (`write_locked`: evaluate, watch, import, diff, carry-over).

Each write opens the DuckDB file for a moment only (readers get in between), so DuckDB's own file
lock cannot keep two runs apart: they would interleave, redo each other's shards and mark each
other interrupted. `writer_lock` holds `<file>.lock` (flock) for the whole run instead; a second
run gets `WarehouseInUse` naming the holder's PID. The kernel drops the lock when the holder dies,
even by SIGKILL, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selfexplain.errors import WarehouseError
from selfexplain.warehouse import MEMORY, WarehouseInUse, io_hint


def lock_path(path: str | Path) -> Path:
    """`<file>.lock`: held (flock) by the process that runs relabel against `<file>`."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


_HELD: dict[str, list[int]] = {}
"""Lock files this process holds: resolved path -> [fd, depth] (the lock is re-entrant)."""


def write_locked(path: str | Path, frames, *, wait_s: float = 0.0) -> dict[str, int]:
    """The one writer path: hold the warehouse's run lock (re-entrant: a run that holds it
    writes through), then upsert `frames` (table -> rows) in one transaction."""
    from selfexplain.warehouse import Warehouse

    with writer_lock(path, wait_s=wait_s), Warehouse(path, wait_s=10) as wh:
        return wh.write(frames)


def restore_locked(path: str | Path, folder: Path, *, wait_s: float = 5.0) -> dict[str, int]:
    """Restore a backup folder (`selfexplain export --backup`) into the warehouse under its run
    lock; the manifest is checked before the warehouse is touched."""
    from selfexplain.warehouse import Warehouse, read_manifest, restore

    read_manifest(Path(folder))  # not a backup: say so before the warehouse is opened
    with writer_lock(path), Warehouse(path, wait_s=wait_s) as wh:
        return restore(wh, Path(folder))


@contextmanager
def writer_lock(path: str | Path, *, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the warehouse's run lock: a second relabel against the same file gets WarehouseInUse
    naming this PID. The kernel releases it when the process dies, even by SIGKILL, so a killed
    run never leaves a stale lock. A no-op for `:memory:`."""
    import fcntl

    if str(path) == MEMORY:
        yield
        return
    key = str(Path(path).resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    target = lock_path(key)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise WarehouseError(f"cannot create the lock file {target}: {err.strerror}; "
                             f"{io_hint(str(err), key)}") from None
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                    pid = int(holder) if holder.isdigit() else None
                    who = f"PID {pid}" if pid is not None else "another process"
                    raise WarehouseInUse(
                        f"warehouse {path} is in use by {who} (a relabel or merge run): wait for "
                        "it to finish, or pass another --warehouse path", pid) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _HELD[key] = [fd, 1]
        try:
            yield
        finally:
            del _HELD[key]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock
