"""`selfexplain import`: restore a backup, merge Parquet shards, or import reference labels."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from selfexplain.locations import DEFAULT_WAREHOUSE


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
    parser.add_argument("--warehouse", default=DEFAULT_WAREHOUSE)
    parser.add_argument("--source", default="neuronpedia", help="with --reference: its origin")
    parser.add_argument("--release", help="with --reference: the SAE release the labels are for")
    parser.add_argument("--sae-id", help="with --reference: the SAE id the labels are for")
    parser.set_defaults(handler=run)


def reference_frame(path: Path, source: str, release: str, sae_id: str):
    """Reference labels from a Neuronpedia-like JSONL file, checked line by line: every problem is
    one InputError naming the line (lines without a description are left out)."""
    import json

    from selfexplain.errors import InputError
    from selfexplain.warehouse import frame, utc_now

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise InputError(f"cannot read {path}: {reason}; give a UTF-8 JSONL file") from None
    now = utc_now()
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            item = json.loads(line)
        except ValueError as err:
            raise InputError(f"{where} is not JSON ({str(err)[:80]}): give one JSON object per "
                             "line") from None
        if not isinstance(item, dict):
            raise InputError(f"{where} is a JSON {type(item).__name__}, not an object with index "
                             "and description")
        missing = [c for c in ("index", "description") if c not in item]
        if missing:
            raise InputError(f"{where} lacks field(s) {missing}: each line needs index and "
                             "description")
        index = item["index"]
        if isinstance(index, str) and re.fullmatch(r"\s*[0-9]+\s*", index):
            index = int(index)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 2**31:
            raise InputError(f"{where}: index {str(index)[:40]!r} is not a feature number "
                             "(0, 1, 2, ...)")
        if not item["description"]:
            continue
        fields = {name: item.get(key) for name, key in (
            ("description", "description"), ("model_id", "modelId"), ("layer", "layer"),
            ("explanation_model", "explanationModelName"))}
        for name, value in fields.items():
            if isinstance(value, bool) or not isinstance(value, (str, int, float, type(None))):
                raise InputError(f"{where}: {name} is a JSON {type(value).__name__}, not text; "
                                 "give it as a string")
            fields[name] = None if value is None else str(value)
        rows.append(dict(source=source, release=release, sae_id=sae_id, feature=index,
                         source_file=str(path), imported_at=now, **fields))
    if not rows:
        raise InputError(f"{path} holds no labels: each line needs an index and a description")
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
    rows = None
    if args.backup:
        from selfexplain.warehouse import read_manifest

        read_manifest(Path(args.backup))  # not a backup: say so before touching the warehouse
    if args.reference:  # checked before the warehouse is opened: bad input leaves it untouched
        if not (args.release and args.sae_id):
            raise InputError("--reference needs --release and --sae-id (the SAE the labels are for)")
        rows = reference_frame(Path(args.reference), args.source, args.release, args.sae_id)
    from selfexplain.runlock import writer_lock

    with writer_lock(args.warehouse), Warehouse(args.warehouse, wait_s=5) as wh:
        if args.backup:
            counts = restore(wh, Path(args.backup))
            print(f"restored {sum(counts.values())} rows in {len(counts)} tables into "
                  f"{args.warehouse}")
            return 0
        wh.write({"reference_label": rows})
    print(f"imported {rows.height} reference labels for {args.release}/{args.sae_id}")
    return 0
