"""Reading the warehouse: a read-only handle, on the live file or the writer's snapshot.

DuckDB lets no second process open a file that a writer holds, so readers (browse, show, sql,
export) fall back to the snapshot the writer publishes after each run.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from selfexplain.errors import WarehouseError
from selfexplain.warehouse import Warehouse, WarehouseInUse, snapshot_path


def open_reader(path: str | Path, *, snapshot: bool | None = None, wait_s: float = 2.0) -> Warehouse:
    """A read-only warehouse. `snapshot=None`: the live file, or its snapshot while a writer holds
    it (`note` says so); `True`: the snapshot only; `False`: the live file only."""
    snap = snapshot_path(path)
    if snapshot:
        if not snap.is_file():
            raise WarehouseError(f"no snapshot {snap}: it is published at the end of each run")
        reader = Warehouse(snap, read_only=True)
        reader.note = f"reading the snapshot {snap}"
        return reader
    try:
        return Warehouse(path, read_only=True, wait_s=wait_s)
    except WarehouseInUse as err:
        if snapshot is False or not snap.is_file():
            raise
        reader = Warehouse(snap, read_only=True)
        stamp = dt.datetime.fromtimestamp(snap.stat().st_mtime).strftime("%Y-%m-%d %H:%M:%S")
        reader.note = f"{err}; reading the snapshot published at {stamp}"
        return reader
