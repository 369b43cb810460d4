"""`selfexplain sql "SELECT ..."`: read-only queries against the warehouse, printed with polars."""

from __future__ import annotations

import argparse
import re
import sys

from selfexplain.locations import DEFAULT_WAREHOUSE

ALLOWED = {"SELECT", "EXPLAIN"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sql",
        help="run a read-only SQL query against the warehouse",
        description="Runs one SELECT (or EXPLAIN) statement on a read-only connection. Views: "
        "v_feature_labels, v_scale_sweep, v_failures, v_runs, v_saes, v_explanations, "
        "v_label_changes, v_eval_summary. While a "
        "run holds the file, the snapshot published by the last run is read instead.",
    )
    parser.add_argument("query", help='e.g. "SELECT feature, label FROM v_feature_labels"')
    parser.add_argument("--warehouse", default=DEFAULT_WAREHOUSE)
    parser.add_argument("--snapshot", action="store_true",
                        help="read the snapshot published by the last run, not the live file")
    parser.add_argument("--format", choices=["table", "csv", "json"], default="table")
    parser.add_argument("--max-rows", type=int, default=50, help="rows shown in table format")
    parser.set_defaults(handler=run)


def check_read_only(query: str) -> None:
    """Refuse anything but one SELECT/EXPLAIN statement, with a one-line reason."""
    import duckdb

    from selfexplain.errors import WarehouseError

    try:
        statements = duckdb.connect(":memory:").extract_statements(query)
    except duckdb.Error as err:
        first = str(err).strip().splitlines()[0]
        raise WarehouseError(f"cannot parse the query: {first}") from None
    if len(statements) != 1:
        raise WarehouseError(f"give exactly one statement (got {len(statements)})")
    kind = _kind(statements[0])
    if kind not in ALLOWED:
        raise WarehouseError(
            f"selfexplain sql is read-only: {kind} statements are refused; write through "
            "`selfexplain relabel` / `selfexplain import`"
        )


def _kind(statement) -> str:
    """The statement's type; for EXPLAIN [ANALYZE] that of the statement it explains (EXPLAIN
    ANALYZE runs it: `EXPLAIN ANALYZE COPY ... TO` would write a file)."""
    import duckdb

    kind = statement.type.name
    if kind != "EXPLAIN":
        return kind
    inner = re.sub(r"^\s*EXPLAIN\s*(\([^)]*\)\s*)?(ANALY[SZ]E\s+)?", "", statement.query,
                   flags=re.IGNORECASE)
    try:
        parsed = duckdb.connect(":memory:").extract_statements(inner)
    except duckdb.Error:
        return "unreadable EXPLAIN"
    return _kind(parsed[0]) if len(parsed) == 1 else "unreadable EXPLAIN"


def run(args: argparse.Namespace) -> int:
    import polars as pl

    from selfexplain.warehouse_read import open_reader

    check_read_only(args.query)
    with open_reader(args.warehouse, snapshot=True if args.snapshot else None) as wh:
        if wh.note:
            print(f"note: {wh.note}", file=sys.stderr)
        result = wh.query(args.query)
    if args.format == "csv":
        sys.stdout.write(result.write_csv())
    elif args.format == "json":
        sys.stdout.write(result.write_ndjson())
    else:
        with pl.Config(tbl_rows=args.max_rows, tbl_cols=-1, fmt_str_lengths=80,
                       tbl_width_chars=200):
            print(result)
    return 0
