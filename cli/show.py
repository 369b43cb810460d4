"""`selfexplain show`: one feature's statistics, next to its latest label when a warehouse has one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "show",
        help="print a feature's statistics (density, top contexts, tokens) and latest label",
        description="Print the statistics shipped next to an SAE (feature_stats.parquet) for one "
        "feature; with --warehouse, also its latest label from v_feature_labels.",
    )
    parser.add_argument("--sae", default="default", help="`default` or a sae-lens folder with "
                        "feature_stats.parquet")
    parser.add_argument("--feature", type=int, required=True, help="feature index")
    parser.add_argument("--warehouse", help="a warehouse file to read the latest label from")
    parser.add_argument("--contexts", type=int, default=10, help="top contexts to print (max 20)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.set_defaults(handler=run)


def sae_stats(spec: str):
    """(statistics frame, release, sae_id) of any SAE spec, named as `load_sae` names it."""
    from selfexplain.saes import sae_folder
    from selfexplain.statstore import load_sae
    from selfexplain.statstore import require_stats_frame

    sae = load_sae(spec)
    return require_stats_frame(sae, sae_folder(spec)), sae.release, sae.sae_id


def latest_label(warehouse: str, release: str, sae_id: str, feature: int) -> dict | None:
    """The current label row of v_feature_labels, or None when there is no label (or no view)."""
    from selfexplain.warehouse_read import open_reader

    with open_reader(warehouse) as reader:
        if "v_feature_labels" not in reader.views():
            return None
        columns = reader.query("SELECT * FROM v_feature_labels LIMIT 0").columns
        order = next((f"{c} DESC NULLS LAST" for c in ("labelled_at", "computed_at", "created_at")
                      if c in columns), "1")
        rows = reader.query(
            f"SELECT * FROM v_feature_labels WHERE release = ? AND sae_id = ? AND feature = ? "
            f"ORDER BY {order} LIMIT 1", [release, sae_id, feature],
        )  # `order` is one of our constant strings above
    return rows.to_dicts()[0] if rows.height else None


def check_feature(feature: int, width: int) -> None:
    from selfexplain.errors import InputError

    if not 0 <= feature < width:
        raise InputError(f"feature {feature} is out of range: this SAE has features "
                         f"0..{width - 1}")


def run(args: argparse.Namespace) -> int:
    from selfexplain.saes import peek_width

    width = peek_width(args.sae)  # from the file headers: answers before sae-lens is imported
    if width is not None:
        check_feature(args.feature, width)
    frame, release, sae_id = sae_stats(args.sae)
    check_feature(args.feature, frame.height)
    row = frame.row(args.feature, named=True)
    label: dict | None = None
    label_note = None
    if args.warehouse:
        if Path(args.warehouse).is_file():
            label = latest_label(args.warehouse, release, sae_id, args.feature)
            label_note = None if label else "no label yet"
        else:
            label_note = f"no label yet (warehouse {args.warehouse} does not exist)"
    if args.json:
        print(json.dumps({"release": release, "sae_id": sae_id, **row, "label": label},
                         default=str, ensure_ascii=False))
        return 0
    print(format_feature(row, release=release, sae_id=sae_id, contexts=args.contexts))
    if label is not None:
        print(format_label(label))
    elif label_note:
        print(f"label: {label_note}")
    return 0


def format_feature(row: dict, *, release: str, sae_id: str, contexts: int) -> str:
    kind = "single-token" if row["single_token"] else "multi-token"
    lines = [
        f"{release}/{sae_id} feature {row['feature']}",
        f"  density {row['density']:.2%}   mean activation {row['mean_activation']:.3g}   "
        f"max activation {row['max_activation']:.3g}",
        f"  {kind}: top token share {row['top_token_share']:.0%}",
        f"  top tokens:  {', '.join(repr(t) for t in row['top_tokens']) or '(never active)'}",
        f"  VocabProj:   {', '.join(repr(t) for t in row['vocabproj_tokens']) or '-'}",
        "  top contexts:",
    ]
    for item in row["top_contexts"][: max(0, contexts)]:
        text = item["text"].replace("\n", "\\n")
        lines.append(f"    {item['activation']:8.3g}  {text}")
    if not row["top_contexts"]:
        lines.append("    (none: the feature never fired on the held-out text)")
    return "\n".join(lines)


def format_label(label: dict) -> str:
    lines = [f"label: {label.get('label')!r}"]
    if label.get("recovered_token") is not None:
        lines.append(f"  recovered token {label['recovered_token']!r}")
    parts = [f"{key} {label[key]:.3g}" for key in ("scale", "composite", "max_selfsim")
             if isinstance(label.get(key), (int, float))]
    if parts:
        lines.append("  " + "   ".join(parts))
    if label.get("failed"):
        lines.append(f"  flagged as a likely failure: {label.get('failure_reason') or 'low self-similarity'}")
    return "\n".join(lines)
