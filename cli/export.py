"""`selfexplain export`: labels as Parquet or Neuronpedia-like JSONL, or a full-warehouse backup."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selfexplain.locations import DEFAULT_WAREHOUSE


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export current labels (parquet | jsonl) or back up the whole warehouse",
        description="Labels come from v_feature_labels with their SAE keys. JSONL rows follow "
        "Neuronpedia's explanation export (modelId, layer, index, description) plus our scores. "
        "--backup DIR writes every table as Parquet with a manifest; `selfexplain import "
        "--backup DIR` restores it.",
    )
    parser.add_argument("--format", choices=["parquet", "jsonl"], default="jsonl")
    parser.add_argument("--out", help="output file (default: labels.<format>)")
    parser.add_argument("--warehouse", default=DEFAULT_WAREHOUSE)
    parser.add_argument("--release", help="only this SAE release")
    parser.add_argument("--sae-id", help="only this SAE id")
    parser.add_argument("--include-failed", action="store_true",
                        help="also export labels flagged as likely failures")
    parser.add_argument("--backup", metavar="DIR", help="back up every table to DIR instead")
    parser.set_defaults(handler=run)


def labels_frame(wh, release: str | None, sae_id: str | None, include_failed: bool):
    return wh.query(
        "SELECT l.*, s.neuronpedia_id FROM v_feature_labels AS l "
        "LEFT JOIN sae AS s ON s.release = l.release AND s.sae_id = l.sae_id "
        "WHERE (? IS NULL OR l.release = ?) AND (? IS NULL OR l.sae_id = ?) "
        "AND NOT l.skipped AND (? OR NOT l.failed) ORDER BY l.release, l.sae_id, l.feature",
        [release, release, sae_id, sae_id, include_failed])


def neuronpedia_rows(labels):
    """Neuronpedia-like rows: modelId + layer (source id) + index + description, and our scores
    (the held-out detection AUROCs among them, null where unscored).

    With a Neuronpedia id (`gemma-2b/6-res-jb`) the first part is modelId and the rest the layer;
    otherwise modelId is the model the label came from and the layer is `<resid layer>-<sae_id>`.
    """
    import polars as pl

    split = pl.col("neuronpedia_id").str.splitn("/", 2)
    fallback_layer = pl.concat_str([pl.col("resid_layer").cast(pl.String).fill_null("x"),
                                    pl.col("sae_id")], separator="-")
    return labels.select(
        pl.coalesce(split.struct.field("field_0"), pl.col("model_id")).alias("modelId"),
        pl.coalesce(split.struct.field("field_1"), fallback_layer).alias("layer"),
        pl.col("feature").cast(pl.String).alias("index"),
        pl.col("label").alias("description"),
        pl.lit("selfexplain").alias("explanationModelName"),
        pl.concat_str([pl.lit("selfexplain-"), pl.col("preset")]).alias("typeName"),
        "release", "sae_id", "recovered_token", "scale", "composite", "max_selfsim", "failed",
        "run_id", "detection_auroc", "detection_auroc_hard",
    )


def run(args: argparse.Namespace) -> int:
    from selfexplain.warehouse_read import open_reader

    with open_reader(args.warehouse) as wh:
        if wh.note:
            print(f"note: {wh.note}", file=sys.stderr)
        if args.backup:
            from selfexplain.warehouse import backup

            manifest = backup(wh, Path(args.backup))
            total = sum(manifest["tables"].values())
            print(f"backed up {len(manifest['tables'])} tables ({total} rows) to {args.backup}")
            return 0
        labels = labels_frame(wh, args.release, args.sae_id, args.include_failed)
    out = Path(args.out or f"labels.{args.format}")
    partial = out.with_name(out.name + ".partial")
    try:  # written beside, then renamed: a full disk never leaves half a file under the name
        if args.format == "parquet":
            labels.drop("neuronpedia_id").write_parquet(partial)
        else:
            neuronpedia_rows(labels).write_ndjson(partial)
        partial.replace(out)
    except OSError as err:
        partial.unlink(missing_ok=True)
        from selfexplain.errors import InputError
        from selfexplain.warehouse import io_hint

        reason = err.strerror or str(err)
        hint = io_hint(reason, str(out), "give another --out path", "--out")
        raise InputError(f"cannot write {out}: {reason}; {hint}") from None
    print(f"wrote {labels.height} labels to {out}")
    return 0
