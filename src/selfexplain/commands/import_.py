"""`selfexplain import`: restore a backup, merge Parquet shards, or import reference labels."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import",
        help="restore a backup, merge Parquet shards, or import reference labels",
        description="Exactly one of --backup (a folder from `selfexplain export --backup`), "
        "--shards (the --out-dir of `selfexplain relabel --out-dir`; runs the merge flow), or "
        "--reference (a Neuronpedia-like JSONL: modelId, layer, index, description).",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--backup", metavar="DIR")
    what.add_argument("--shards", metavar="DIR")
    what.add_argument("--reference", metavar="JSONL")
    parser.add_argument("--warehouse", default="warehouse.duckdb")
    parser.add_argument("--source", default="neuronpedia", help="with --reference: its origin")
    parser.add_argument("--release", help="with --reference: the SAE release the labels are for")
    parser.add_argument("--sae-id", help="with --reference: the SAE id the labels are for")
    parser.set_defaults(handler=run)


def reference_frame(path: Path, source: str, release: str, sae_id: str):
    import polars as pl

    from selfexplain.errors import InputError
    from selfexplain.warehouse import frame, utc_now

    try:
        raw = pl.read_ndjson(path)
    except Exception as err:  # polars raises several types on malformed input
        raise InputError(f"cannot read {path} as JSONL: {str(err).splitlines()[0]}") from None
    missing = [c for c in ("index", "description") if c not in raw.columns]
    if missing:
        raise InputError(f"{path} lacks field(s) {missing}: each line needs index and description")
    now = utc_now()
    rows = [dict(source=source, release=release, sae_id=sae_id, feature=int(r["index"]),
                 description=r["description"], model_id=r.get("modelId"),
                 layer=r.get("layer"), explanation_model=r.get("explanationModelName"),
                 source_file=str(path), imported_at=now)
            for r in raw.iter_rows(named=True) if r.get("description")]
    return frame("reference_label", rows)


def run(args: argparse.Namespace) -> int:
    from selfexplain.errors import InputError
    from selfexplain.warehouse import Warehouse, restore

    if args.shards:
        from flows.merge import merge_shards

        summary = merge_shards(args.shards, str(Path(args.warehouse).resolve()))
        print(f"merged {summary['folders']} Parquet folders ({summary['rows']} rows) into "
              f"{args.warehouse}")
        return 0
    with Warehouse(args.warehouse, wait_s=5) as wh:
        if args.backup:
            counts = restore(wh, Path(args.backup))
            print(f"restored {sum(counts.values())} rows in {len(counts)} tables into "
                  f"{args.warehouse}")
            return 0
        if not (args.release and args.sae_id):
            raise InputError("--reference needs --release and --sae-id (the SAE the labels are for)")
        rows = reference_frame(Path(args.reference), args.source, args.release, args.sae_id)
        wh.write({"reference_label": rows})
    print(f"imported {rows.height} reference labels for {args.release}/{args.sae_id}")
    return 0
