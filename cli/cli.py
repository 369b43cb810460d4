"""`selfexplain` command line. Each subcommand lives in `cli/<name>.py` and exposes
`register(subparsers)`; this module discovers them, parses, and turns our errors into one line on
stderr with exit status 2."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import cli
from selfexplain.errors import SelfExplainError

NOT_COMMANDS = frozenset({"cli", "__main__", "common"})
"""Modules of `cli/` that are no subcommand: this one, `python -m cli`, shared flags."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfexplain",
        description="Label SAE features by asking the model itself what they mean.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(cli.__path__), key=lambda m: m.name):
        if info.name in NOT_COMMANDS:
            continue
        module = importlib.import_module(f"{cli.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except SelfExplainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
