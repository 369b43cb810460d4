"""`selfexplain import`: restore a backup, merge Parquet shards, or import reference labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from selfexplain.locations import DEFAULT_WAREHOUSE


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import",
        help="restore a backup, merge Parquet shards, or import reference labels",
        description="Exactly one of --backup (a folder from `selfexplain export --backup`), "
        "--shards (the --out-dir of `selfexplain relabel --out-dir`; runs the merge flow), or "
        "--reference (a Neuronpedia export: JSON, JSONL with modelId, layer, index, description; "
        "or a CSV with feature and description columns).",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--backup", metavar="DIR")
    what.add_argument("--shards", metavar="DIR")
    what.add_argument("--reference", metavar="FILE")
    parser.add_argument("--warehouse", default=DEFAULT_WAREHOUSE)
    parser.add_argument("--source", default="neuronpedia", help="with --reference: its origin")
    parser.add_argument("--release", help="with --reference: the SAE release the labels are for")
    parser.add_argument("--sae-id", help="with --reference: the SAE id the labels are for")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.shards:
        from flows.merge import merge_shards

        summary = merge_shards(args.shards, str(Path(args.warehouse).resolve()))
        print(f"merged {summary['folders']} Parquet folders ({summary['rows']} rows) into "
              f"{args.warehouse}")
        return 0
    if args.backup:
        from selfexplain.runlock import restore_locked

        counts = restore_locked(args.warehouse, Path(args.backup))
        print(f"restored {sum(counts.values())} rows in {len(counts)} tables into "
              f"{args.warehouse}")
        return 0
    from selfexplain.errors import InputError
    from selfexplain.references import import_references

    if not (args.release and args.sae_id):
        raise InputError("--reference needs --release and --sae-id (the SAE the labels are for)")
    n = import_references(args.warehouse, Path(args.reference), args.source, args.release,
                          args.sae_id)
    print(f"imported {n} reference labels for {args.release}/{args.sae_id}")
    return 0
