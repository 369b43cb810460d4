"""`selfexplain browse`: the feature browser, a local web app over one warehouse (read-only)."""

from __future__ import annotations

import argparse
from pathlib import Path

from selfexplain.locations import DEFAULT_WAREHOUSE


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "browse",
        help="serve a web page per labelled feature (label, candidates, sweep, contexts)",
        description="Serve the feature browser on http://HOST:PORT: SAEs, a searchable feature "
        "table, one page per feature, the latest evaluation, and a JSON API for each. Reads the "
        "warehouse read-only (the published snapshot while a run writes).",
    )
    parser.add_argument("--warehouse", default=DEFAULT_WAREHOUSE, type=Path)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8765)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from selfexplain.errors import InputError
    from selfexplain.warehouse_read import open_reader

    path = args.warehouse.expanduser()
    if not path.is_file():
        raise InputError(f"no warehouse at {path}: run `make run` (or `selfexplain relabel`) "
                         "first, or pass --warehouse")
    if not 0 < args.port < 65536:
        raise InputError(f"--port {args.port} is not a TCP port (1-65535)")
    open_reader(path).close()  # a damaged or foreign file: say so before serving

    import uvicorn

    from selfexplain.browse.app import create_app

    print(f"feature browser for {path.resolve()} on http://{args.host}:{args.port}/ "
          "(Ctrl-C stops it)", flush=True)
    uvicorn.run(create_app(path), host=args.host, port=args.port, log_level="warning")
    return 0
