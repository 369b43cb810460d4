"""`selfexplain diff SAE_A SAE_B`: which features of B are A's (matched), which are new, which of
A's vanished; with a warehouse, whether the labels of matched features agree."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    from selfexplain.carryover import DEFAULT_MATCH_THRESHOLD

    parser = subparsers.add_parser(
        "diff",
        help="compare two SAE versions: matched, new and vanished features, label agreement",
        description="Match the features of SAE_B (the new version) against SAE_A by decoder "
        "cosine (mutual nearest neighbours at or above --threshold). Each SAE is `default`, a "
        "sae-lens folder, a .safetensors file, or RELEASE/SAE_ID (taken from the warehouse's "
        "stored decoders when it has labelled that SAE, else loaded). With --warehouse, matched "
        "features labelled on both sides are compared: same text, same recovered token, or MiniLM "
        "similarity of the labels.",
    )
    parser.add_argument("sae_a", help="the old SAE")
    parser.add_argument("sae_b", help="the new SAE")
    parser.add_argument("--warehouse", help="read labels (and stored decoders) from this file")
    parser.add_argument("--threshold", type=float, default=DEFAULT_MATCH_THRESHOLD,
                        help=f"decoder cosine of a match (default {DEFAULT_MATCH_THRESHOLD})")
    parser.add_argument("--record", action="store_true",
                        help="store the matches in the warehouse's feature_match table (so "
                        "v_label_changes shows the pairs)")
    parser.add_argument("--examples", type=int, default=10,
                        help="changed labels to print (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.set_defaults(handler=run)


def resolve(spec: str, warehouse: str | None):
    """(release, sae_id, decoder (n, d)) of an SAE argument."""
    from pathlib import Path

    from selfexplain.carryover import decoder_dir, load_decoder, unit_rows
    from selfexplain.saes import load_sae

    if warehouse and "/" in spec and not Path(spec).expanduser().exists():
        release, sae_id = spec.split("/", 1)
        stored = load_decoder(decoder_dir(warehouse), release, sae_id)
        if stored is not None:
            return release, sae_id, stored
    sae = load_sae(spec)
    return sae.release, sae.sae_id, unit_rows(sae.decoder)


CURRENT_SQL = """
SELECT feature, label, recovered_token, provisional FROM v_feature_labels
WHERE release = ? AND sae_id = ? AND NOT skipped
"""


def label_pairs(warehouse: str, pairs, a: tuple[str, str], b: tuple[str, str]):
    """Matched pairs joined with both sides' current labels (None when the warehouse has none)."""
    import polars as pl

    from selfexplain.warehouse import open_reader

    with open_reader(warehouse) as wh:
        if "v_feature_labels" not in wh.views():
            return None
        old = wh.query(CURRENT_SQL, list(a))
        new = wh.query(CURRENT_SQL, list(b))
    old = old.rename({c: f"{c}_a" for c in old.columns if c != "feature"}).rename(
        {"feature": "source_feature"})
    new = new.rename({c: f"{c}_b" for c in new.columns if c != "feature"})
    return (pairs.join(new, on="feature", how="inner")
            .join(old, on="source_feature", how="inner")
            .with_columns(pl.col("cosine").round(3)))


def agreement(labelled):
    """`labelled` with similarity and agree columns (fresh labels on both sides only)."""
    import polars as pl

    from selfexplain.carryover import label_similarity, labels_agree
    from selfexplain.evaluation.real import Embedder

    fresh = labelled.filter(~pl.col("provisional_a") & ~pl.col("provisional_b"))
    if fresh.height == 0:
        return fresh.with_columns(pl.lit(None, pl.Float64).alias("similarity"),
                                  pl.lit(None, pl.Boolean).alias("agree"))
    similarity = label_similarity(fresh["label_b"].to_list(), fresh["label_a"].to_list(),
                                  Embedder())
    agree = labels_agree(fresh["label_b"].to_list(), fresh["label_a"].to_list(),
                         fresh["recovered_token_b"].to_list(),
                         fresh["recovered_token_a"].to_list(), similarity)
    return fresh.with_columns(pl.Series("similarity", similarity, pl.Float64),
                              pl.Series("agree", agree, pl.Boolean))


def by_cosine(fresh, edges=(0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.01)):
    """Agreement per cosine bin: rows of (bin, n, agree)."""
    import polars as pl

    rows = []
    for low, high in zip(edges, edges[1:]):
        part = fresh.filter((pl.col("cosine") >= low) & (pl.col("cosine") < high))
        if part.height:
            rows.append({"cosine": f"[{low:.2f}, {min(high, 1.0):.2f}]" if high > 1 else
                         f"[{low:.2f}, {high:.2f})", "n": part.height,
                         "agree": round(float(part["agree"].mean()), 3)})
    return rows


def run(args: argparse.Namespace) -> int:
    import polars as pl

    from selfexplain.carryover import check_threshold, match_features
    from selfexplain.warehouse import check_duckdb_file

    check_threshold(args.threshold)
    if args.warehouse:
        check_duckdb_file(args.warehouse)
    release_a, sae_id_a, decoder_a = resolve(args.sae_a, args.warehouse)
    release_b, sae_id_b, decoder_b = resolve(args.sae_b, args.warehouse)
    matches = match_features(decoder_b, decoder_a, threshold=args.threshold, k=1)
    pairs = (matches.frame().filter(pl.col("matched"))
             .select("feature", "source_feature", "cosine"))
    counts = matches.summary()
    out: dict[str, object] = {
        "a": f"{release_a}/{sae_id_a}", "b": f"{release_b}/{sae_id_b}",
        "a_features": int(decoder_a.shape[0]), "b_features": int(decoder_b.shape[0]),
        "threshold": args.threshold, **counts,
        "matched_cosine_median": round(float(pairs["cosine"].median()), 3) if pairs.height else None,
    }
    fresh = None
    if args.warehouse:
        if args.record:
            record(args.warehouse, matches, (release_a, sae_id_a), (release_b, sae_id_b))
        labelled = label_pairs(args.warehouse, pairs, (release_a, sae_id_a),
                               (release_b, sae_id_b))
        if labelled is not None:
            fresh = agreement(labelled)
            out["labelled_pairs"] = labelled.height
            out["carried_pairs"] = labelled.height - fresh.height
            out["fresh_pairs"] = fresh.height
            out["agree"] = int(fresh["agree"].sum()) if fresh.height else 0
            out["agreement_by_cosine"] = by_cosine(fresh)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"A {out['a']} ({out['a_features']} features)  ->  B {out['b']} "
          f"({out['b_features']} features)")
    print(f"matched (mutual nearest, decoder cosine >= {args.threshold:g}): {counts['matched']}"
          + (f", median cosine {out['matched_cosine_median']}" if pairs.height else ""))
    print(f"new in B: {counts['new']}   vanished from A: {counts['vanished']}")
    if fresh is None:
        if args.warehouse:
            print(f"{args.warehouse} holds no labels")
        return 0
    print(f"labels: {out['labelled_pairs']} matched pairs labelled on both sides, "
          f"{out['carried_pairs']} of them carried over (provisional), {out['fresh_pairs']} "
          f"labelled afresh on both")
    if fresh.height:
        print(f"  agree: {out['agree']} of {fresh.height} ({out['agree'] / fresh.height:.0%}); "
              "by cosine:")
        for row in out["agreement_by_cosine"]:
            print(f"    {row['cosine']:>14}  n {row['n']:>5}  agree {row['agree']:.0%}")
        changed = fresh.filter(~pl.col("agree")).sort("cosine", descending=True)
        if changed.height and args.examples:
            print(f"changed labels (highest cosine first, {min(args.examples, changed.height)} of "
                  f"{changed.height}):")
            for row in changed.head(args.examples).iter_rows(named=True):
                print(f"  B {row['feature']} / A {row['source_feature']} (cos {row['cosine']}): "
                      f"{_short(row['label_b'])!r} was {_short(row['label_a'])!r}")
    return 0


def _short(text: str | None, n: int = 50) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def record(warehouse: str, matches, a: tuple[str, str], b: tuple[str, str]) -> None:
    from selfexplain.runlock import writer_lock
    from selfexplain.warehouse import Warehouse, conform, utc_now

    rows = matches.table_rows(release=b[0], sae_id=b[1], source_release=a[0],
                              source_sae_id=a[1], matched_at=utc_now())
    with writer_lock(warehouse), Warehouse(warehouse) as wh:
        wh.write({"feature_match": conform("feature_match", rows)})
