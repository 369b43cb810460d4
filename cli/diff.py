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


def run(args: argparse.Namespace) -> int:
    import polars as pl

    from selfexplain.sae_diff import diff_saes

    out, pairs, fresh = diff_saes(args.sae_a, args.sae_b, warehouse=args.warehouse,
                                  threshold=args.threshold, record_matches=args.record)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"A {out['a']} ({out['a_features']} features)  ->  B {out['b']} "
          f"({out['b_features']} features)")
    print(f"matched (mutual nearest, decoder cosine >= {args.threshold:g}): {out['matched']}"
          + (f", median cosine {out['matched_cosine_median']}" if pairs.height else ""))
    print(f"new in B: {out['new']}   vanished from A: {out['vanished']}")
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
