"""The DuckDB warehouse: schema from `sql/`, deduplicated upserts, one writer, read-only readers.

On every writable open the SQL files are applied in name order, idempotently:
`sql/migrations/NNN_<name>.sql` (forward migrations not yet recorded in `schema_version`; a fresh
warehouse is created at the latest version and records them all), then `sql/tables/*.sql`, then
`sql/views/*.sql`. Rows (typed frames: `warehouse_rows`) go in through `sql/upserts/<table>.sql`: a polars frame is deduplicated on
the table's primary key, registered as `incoming`, and upserted. Values only ever travel as
parameters or registered frames.

DuckDB lets one process open a file read-write and no other process open it at all while it does.
A second opener gets `WarehouseInUse` naming the holder's PID; readers can fall back to the
snapshot the writer publishes after each run (`<file>.snapshot`): `warehouse_read.open_reader`.

This module never imports Prefect.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import duckdb
import polars as pl

from selfexplain.errors import WarehouseError
from selfexplain.locations import DEFAULT_WAREHOUSE, MEMORY  # noqa: F401 (re-exported)
from selfexplain.warehouse_rows import LATEST_WINS, utc_now


def default_sql_dir() -> Path:
    """`sql/` shipped inside the package if present, else the repository's `sql/` folder."""
    packaged = Path(__file__).parent / "sql"
    if (packaged / "tables").is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sql"


def snapshot_path(path: str | Path) -> Path:
    """Where the writer publishes a read-only copy for readers: `<file>.snapshot`."""
    path = Path(path)
    return path.with_name(path.name + ".snapshot")


class WarehouseInUse(WarehouseError):
    """Another process holds the warehouse file (DuckDB allows one process per file)."""

    def __init__(self, message: str, pid: int | None):
        super().__init__(message)
        self.pid = pid


_PID = re.compile(r"\(PID (\d+)\)")
DUCKDB_MAGIC = b"DUCK"
"""Bytes 8-11 of every DuckDB database file."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def io_hint(text: str, path: str, default: str = "check the path, or pass another --warehouse path",
            option: str = "--warehouse") -> str:
    """What to do about a failure on a file of ours (`option` names its flag), from the error."""
    lowered = text.lower()
    if "no space left" in lowered or "disk quota" in lowered:
        return "free some disk space, then run again"
    if "read-only file system" in lowered or "permission denied" in lowered:
        return f"make {Path(path).parent} writable, or pass another {option} path"
    if ("not a valid duckdb" in lowered or "corrupt" in lowered or "checksum" in lowered
            or "could not read" in lowered or "not a duckdb" in lowered):
        return ("the file is damaged or not a warehouse: restore a backup (selfexplain import "
                "--backup DIR --warehouse NEW) or pass another --warehouse path")
    return default


def _open_error(path: str, err: duckdb.Error, read_only: bool) -> WarehouseError:
    text = str(err)
    if "Could not set lock" in text or "Conflicting lock" in text:
        match = _PID.search(text)
        pid = int(match.group(1)) if match else None
        who = f"PID {pid}" if pid is not None else "another process"
        hint = (
            "wait for it to finish, or query the published snapshot (selfexplain sql --snapshot)"
            if read_only
            else "wait for that run to finish, or pass another --warehouse path"
        )
        return WarehouseInUse(f"warehouse {path} is in use by {who}: {hint}", pid)
    first = _first_line(err)
    return WarehouseError(f"cannot open warehouse {path}: {first}; {io_hint(first, path)}")


def check_duckdb_file(path: str) -> None:
    """Refuse an existing non-empty file that is not a DuckDB database (DuckDB would otherwise try
    to download a reader extension for SQLite files and the like)."""
    file = Path(path)
    if path == MEMORY or not file.is_file() or file.stat().st_size == 0:
        return
    try:
        with open(file, "rb") as handle:
            head = handle.read(16)
    except OSError as err:
        raise WarehouseError(f"cannot read warehouse {path}: {err.strerror}; "
                             f"{io_hint(str(err), path)}") from None
    if len(head) < 12 or head[8:12] != DUCKDB_MAGIC:
        kind = "an SQLite database" if head.startswith(b"SQLite format") else "not a DuckDB file"
        raise WarehouseError(
            f"{path} is not a selfexplain warehouse ({kind}): pass another --warehouse path, or "
            "restore a backup there (selfexplain import --backup DIR)"
        )


class Warehouse:
    """One DuckDB connection to a warehouse file (or `:memory:`), schema applied on writable open.

    Use as a context manager; it closes the connection (and releases the file lock) on exit.
    """

    def __init__(self, path: str | Path = DEFAULT_WAREHOUSE, *, read_only: bool = False,
                 sql_dir: Path | None = None, wait_s: float = 0.0):
        self.path = str(path)
        self.read_only = read_only
        self.sql_dir = Path(sql_dir) if sql_dir is not None else default_sql_dir()
        self.note: str | None = None
        """Set when this reader serves a snapshot instead of the live file."""
        if read_only and self.path != MEMORY and not Path(self.path).is_file():
            raise WarehouseError(
                f"warehouse {self.path} does not exist: run `selfexplain relabel --warehouse "
                f"{self.path}` first, or pass the right --warehouse path"
            )
        if self.path != MEMORY:
            check_duckdb_file(self.path)
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise WarehouseError(f"cannot create the folder of warehouse {self.path}: "
                                     f"{err.strerror}; {io_hint(str(err), self.path)}") from None
        self.con = self._connect(wait_s)
        if read_only and self.path != MEMORY and not self._has_table("schema_version"):
            self.con.close()
            raise WarehouseError(f"{self.path} is not a selfexplain warehouse (no schema_version "
                                 "table): pass another --warehouse path")
        if not read_only:
            try:
                self.apply_schema()
            except BaseException:
                self.con.close()
                raise

    # -- connection ---------------------------------------------------------------------------
    def _connect(self, wait_s: float) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return duckdb.connect(self.path, read_only=self.read_only)
            except duckdb.Error as err:
                error = _open_error(self.path, err, self.read_only)
                if isinstance(error, WarehouseInUse) and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise error from None

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Warehouse":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema -------------------------------------------------------------------------------
    def _files(self, folder: str) -> list[Path]:
        return sorted((self.sql_dir / folder).glob("*.sql"), key=lambda p: p.name)

    def migrations(self) -> list[tuple[int, str, Path]]:
        """Forward migrations `NNN_<name>.sql`, by version."""
        out = []
        for path in self._files("migrations"):
            match = re.fullmatch(r"(\d+)_(.+)\.sql", path.name)
            if match is None:
                raise WarehouseError(f"migration {path} must be named NNN_<name>.sql")
            out.append((int(match.group(1)), match.group(2), path))
        return out

    def _one(self, sql: str, params: Sequence[object] | None = None) -> tuple | None:
        """The first row of a query, the result fully consumed (DuckDB 2.0 refuses new work on a
        connection with an unfinished result)."""
        rows = self.con.execute(sql, params or []).fetchall()
        return rows[0] if rows else None

    def _has_table(self, name: str) -> bool:
        row = self._one(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
            "AND schema_name = 'main' AND table_name = ?", [name]
        )
        return bool(row and row[0])

    def _run_file(self, path: Path) -> None:
        try:
            self.con.execute(path.read_text())
        except duckdb.Error as err:
            first = str(err).strip().splitlines()[0]
            raise WarehouseError(f"SQL file {path.name} failed on {self.path}: {first}") from None

    def _commit(self, what: str) -> None:
        """COMMIT, turning a failed write (full or read-only disk) into one WarehouseError line."""
        try:
            self.con.execute("COMMIT")
        except duckdb.Error as err:
            first = _first_line(err)
            raise WarehouseError(f"{what} on {self.path} failed: {first}; "
                                 f"{io_hint(first, self.path)}") from None

    def _rollback(self) -> None:
        try:
            self.con.execute("ROLLBACK")
        except duckdb.Error:  # nothing open any more (a failed COMMIT already ended it)
            pass

    def apply_schema(self) -> None:
        """Migrations, tables, views: idempotent, in one transaction."""
        fresh = not self._has_table("schema_version")
        if fresh:
            n_tables = self._one(
                "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database()"
            )[0]
            if n_tables:
                raise WarehouseError(
                    f"{self.path} holds {n_tables} tables but no schema_version: it is not a "
                    "selfexplain warehouse; pass another --warehouse path"
                )
        migrations = self.migrations()
        latest = max((v for v, _, _ in migrations), default=0)
        current = 0 if fresh else self.schema_version()
        if current > latest:
            raise WarehouseError(
                f"warehouse {self.path} is at schema version {current}, newer than this "
                f"selfexplain knows ({latest}): upgrade selfexplain"
            )
        self.con.execute("BEGIN TRANSACTION")
        try:
            applied: list[tuple[int, str]] = []
            if not fresh:
                for version, name, path in migrations:
                    if version > current:
                        self._run_file(path)
                        applied.append((version, name))
            for path in self._files("tables"):
                self._run_file(path)
            if fresh:  # created at the latest version: every migration is already in the tables
                applied = [(0, "baseline")] + [(v, n) for v, n, _ in migrations]
            for version, name in applied:
                self.con.execute(
                    "INSERT INTO schema_version (version, name) VALUES (?, ?) "
                    "ON CONFLICT (version) DO NOTHING", [version, name]
                )
            for path in self._files("views"):
                self._run_file(path)
            self._commit("applying the schema")
        except BaseException:
            self._rollback()
            raise

    def schema_version(self) -> int:
        row = self._one("SELECT max(version) FROM schema_version")
        return int(row[0]) if row and row[0] is not None else 0

    def tables(self) -> list[str]:
        rows = self.con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
            "AND schema_name = 'main' ORDER BY table_name"
        ).fetchall()
        return [r[0] for r in rows]

    def primary_key(self, table: str) -> list[str]:
        row = self._one(
            "SELECT constraint_column_names FROM duckdb_constraints() "
            "WHERE database_name = current_database() AND table_name = ? "
            "AND constraint_type = 'PRIMARY KEY'", [table]
        )
        if row is None:
            raise WarehouseError(f"table {table!r} has no primary key in {self.path}")
        return list(row[0])

    # -- writing ------------------------------------------------------------------------------
    def upsert(self, table: str, frame: pl.DataFrame) -> int:
        """Deduplicate `frame` on the table's key (last row wins) and upsert it; rows written."""
        if self.read_only:
            raise WarehouseError(f"warehouse {self.path} is open read-only: cannot write {table}")
        sql_file = self.sql_dir / "upserts" / f"{table}.sql"
        if not sql_file.is_file():
            raise WarehouseError(f"no upsert for table {table!r}: add sql/upserts/{table}.sql")
        if frame.height == 0:
            return 0
        key = self.primary_key(table)
        missing = [k for k in key if k not in frame.columns]
        if missing:
            raise WarehouseError(f"rows for {table} lack key column(s) {missing}")
        if table in LATEST_WINS:  # the newest row of a key wins, whatever the order in the batch
            frame = frame.sort(list(LATEST_WINS[table]), nulls_last=False, maintain_order=True)
        frame = frame.unique(subset=key, keep="last", maintain_order=True)
        self.con.register("incoming", frame)
        try:
            self.con.execute(sql_file.read_text())
        except duckdb.Error as err:
            first = str(err).strip().splitlines()[0]
            hint = io_hint(first, self.path, default="")
            raise WarehouseError(f"upsert into {table} failed: {first}"
                                 + (f"; {hint}" if hint else "")) from None
        finally:
            try:
                self.con.unregister("incoming")
            except duckdb.Error:  # an aborted transaction: the caller rolls back, then it is gone
                pass
        return frame.height

    def write(self, frames: Mapping[str, pl.DataFrame]) -> dict[str, int]:
        """Upsert several tables in one transaction: all rows land, or none."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            counts = {table: self.upsert(table, frame) for table, frame in frames.items()}
            self._commit(f"writing {', '.join(frames)}")
        except BaseException:
            self._rollback()
            try:
                self.con.unregister("incoming")
            except duckdb.Error:
                pass
            raise
        return counts

    def execute(self, sql: str, params: Sequence[object] | None = None) -> None:
        """Run one statement (our own SQL only; values as parameters)."""
        self.con.execute(sql, params or []).fetchall()

    def publish_snapshot(self) -> Path | None:
        """Checkpoint and copy the file to `<file>.snapshot` (atomic rename) for readers."""
        if self.path == MEMORY or self.read_only:
            return None
        target = snapshot_path(self.path)
        partial = target.with_name(target.name + ".partial")
        try:
            self.con.execute("CHECKPOINT")
            shutil.copyfile(self.path, partial)
            os.replace(partial, target)
        except (OSError, duckdb.Error) as err:
            partial.unlink(missing_ok=True)
            first = _first_line(err)
            raise WarehouseError(f"cannot publish the snapshot {target}: {first}; "
                                 f"{io_hint(first, self.path)}") from None
        return target

    # -- reading ------------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[object] | None = None) -> pl.DataFrame:
        """Run one statement and return its rows as a polars frame."""
        try:
            relation = self.con.sql(sql, params=params) if params else self.con.sql(sql)
        except duckdb.Error as err:
            first = str(err).strip().splitlines()[0]
            raise WarehouseError(f"query failed: {first}") from None
        return relation.pl() if relation is not None else pl.DataFrame()

    def table(self, name: str) -> pl.DataFrame:
        """Every row of one table or view (the name must exist in the catalog)."""
        known = set(self.tables()) | set(self.views())
        if name not in known:
            raise WarehouseError(f"no table or view named {name!r} in {self.path}")
        return self.query(f'SELECT * FROM "{name}"')  # name checked against the catalog above

    def views(self) -> list[str]:
        rows = self.con.execute(
            "SELECT view_name FROM duckdb_views() WHERE database_name = current_database() "
            "AND NOT internal ORDER BY view_name"
        ).fetchall()
        return [r[0] for r in rows]


def backup(wh: Warehouse, folder: Path) -> dict[str, object]:
    """Every table as `<table>.parquet` plus `manifest.json`, written atomically into `folder`."""
    from selfexplain import __version__

    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise WarehouseError(f"backup folder {folder} already exists: give a new folder")
    partial = folder.with_name(folder.name + ".partial")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        counts: dict[str, int] = {}
        for table in wh.tables():
            rows = wh.table(table)
            rows.write_parquet(partial / f"{table}.parquet")
            counts[table] = rows.height
        manifest = {"schema_version": wh.schema_version(), "created_at": utc_now().isoformat(),
                    "selfexplain_version": __version__, "source": wh.path, "tables": counts}
        (partial / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if folder.exists():
            folder.rmdir()
        partial.rename(folder)
    except OSError as err:
        shutil.rmtree(partial, ignore_errors=True)
        message = err.strerror or _first_line(err)
        hint = io_hint(message, str(folder), "give another folder", "--backup")
        raise WarehouseError(f"cannot write the backup {folder}: {message}; {hint}") from None
    return manifest


def read_manifest(folder: Path) -> dict[str, object]:
    """A backup's manifest.json, checked: schema_version (int) and tables (name -> rows)."""
    manifest_path = Path(folder) / "manifest.json"
    if not manifest_path.is_file():
        raise WarehouseError(f"{folder} has no manifest.json: not a `selfexplain export --backup`")
    try:
        manifest = json.loads(manifest_path.read_text())
        version = int(manifest["schema_version"])
        tables = manifest["tables"]
        if not isinstance(tables, dict) or not all(isinstance(t, str) for t in tables):
            raise TypeError("tables is not a mapping of table names")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise WarehouseError(f"{manifest_path} is damaged ({type(err).__name__}: "
                             f"{_first_line(err)}): make the backup again") from None
    return {**manifest, "schema_version": version, "tables": tables}


def _restorable(wh: Warehouse, table: str, rows: pl.DataFrame) -> pl.DataFrame:
    """A backup table as the current schema expects it: columns added by later migrations are
    filled with NULL (a backup made before a migration restores into the migrated warehouse)."""
    columns = wh.con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() "
        "AND table_name = ? ORDER BY column_index", [table]).fetchall()
    missing = [name for (name,) in columns if name not in rows.columns]
    return rows.with_columns([pl.lit(None).alias(name) for name in missing]) if missing else rows


def restore(wh: Warehouse, folder: Path) -> dict[str, int]:
    """Upsert a backup into `wh` (one transaction). Restoring twice changes nothing."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if int(manifest["schema_version"]) > wh.schema_version():
        raise WarehouseError(
            f"backup {folder} is at schema version {manifest['schema_version']}, newer than "
            f"{wh.path} ({wh.schema_version()}): upgrade selfexplain first"
        )
    known = set(wh.tables())
    frames: dict[str, pl.DataFrame] = {}
    for table in manifest["tables"]:
        if table == "schema_version":
            continue
        if table not in known:
            raise WarehouseError(f"backup table {table!r} does not exist in {wh.path}")
        try:
            rows = pl.read_parquet(folder / f"{table}.parquet")
        except Exception as err:  # polars raises several types on missing or damaged files
            raise WarehouseError(f"backup file {folder / (table + '.parquet')} is missing or "
                                 f"damaged ({_first_line(err)[:120]}): make the backup again"
                                 ) from None
        frames[table] = _restorable(wh, table, rows)
    wh.con.execute("BEGIN TRANSACTION")
    try:
        counts = {}
        for table, rows in frames.items():
            if (wh.sql_dir / "upserts" / f"{table}.sql").is_file():
                counts[table] = wh.upsert(table, rows)
            else:  # a table without an upsert file: keep existing rows, add the missing ones
                wh.con.register("incoming", rows)
                try:  # `table` was checked against the catalog above
                    wh.con.execute(f'INSERT OR IGNORE INTO "{table}" BY NAME SELECT * FROM incoming')
                finally:
                    wh.con.unregister("incoming")
                counts[table] = rows.height
        wh._commit(f"restoring {folder}")
    except BaseException:
        wh._rollback()
        raise
    return counts
