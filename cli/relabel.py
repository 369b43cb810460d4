"""`selfexplain relabel`: run the Prefect `relabel` flow (ephemeral: no server needed) and write
labels into the DuckDB warehouse; ends with the warehouse path and a ready SQL query."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cli.explain import add_config_arguments
from selfexplain.locations import DEFAULT_WAREHOUSE

OVERRIDE_FLAGS = ("scale_unit", "selection", "placeholder", "injection_layer", "probe_layer",
                  "max_new_tokens", "failure_metric", "failure_threshold", "direction",
                  "adapter", "precision")
"""Engine flags that travel in the request's `overrides` (preset/scales/samples/seed have fields)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "relabel",
        help="label SAE features into the DuckDB warehouse (Prefect flow, sharded, resumable)",
        description="Runs the `relabel` Prefect flow in-process (an ephemeral Prefect server, or "
        "the one PREFECT_API_URL points at). Shards already stored for the same model, SAE and "
        "settings are skipped, so an interrupted run resumes when started again.",
    )
    parser.add_argument("--sae", default="default",
                        help="`default`, RELEASE/SAE_ID, a sae-lens folder, or a .safetensors")
    parser.add_argument("--features", default="0-15", help="indices like 0-15 or 0-3,40")
    parser.add_argument("--all-features", action="store_true",
                        help="every latent of the SAE (overrides --features)")
    parser.add_argument("--warehouse", default=DEFAULT_WAREHOUSE, help="DuckDB file")
    parser.add_argument("--shard-size", type=int, default=64,
                        help="features per shard (task); 64 fills one batch of the default preset")
    parser.add_argument("--layer-threshold", action="store_true",
                        help="flag failures with the threshold `selfexplain evaluate --null N "
                        "--warehouse W` drew for this model, layer and settings")
    parser.add_argument("--carry-over", action="store_true",
                        help="first match the SAE against the SAEs this warehouse labelled for "
                        "the same model and hook and carry their labels over (provisional), "
                        "then label the unmatched features")
    parser.add_argument("--matched", choices=["skip", "relabel"], default=None,
                        help="with --carry-over: leave matched features with the carried label "
                        "(skip, default) or label them too, after the unmatched ones (relabel)")
    parser.add_argument("--match-threshold", type=float, default=None,
                        help="decoder cosine of a match (default 0.7)")
    parser.add_argument("--out-dir", help="scale-out: write Parquet shards here instead of the "
                        "warehouse; `selfexplain import --shards DIR` merges them")
    parser.add_argument("--no-collect", action="store_true",
                        help="an SAE without statistics: inject decoder rows instead of running "
                        "`collect` first (said in one line; weaker labels, no fires_on)")
    parser.add_argument("--corpus", default=None,
                        help="the text `collect` reads when statistics are missing (default: the "
                        "embedded corpus)")
    parser.add_argument("--no-score", action="store_true",
                        help="skip the held-out detection scores of the new labels")
    parser.add_argument("--collect-tokens", type=int, default=None,
                        help="training-document tokens collect reads (default 1000000)")
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def build_request(args: argparse.Namespace):
    from tasks.request import RelabelRequest

    overrides = {name: getattr(args, name) for name in OVERRIDE_FLAGS
                 if getattr(args, name, None) is not None}
    return RelabelRequest.build(
        model=args.model, sae=args.sae, features=args.features, all_features=args.all_features,
        preset=args.preset, scales=args.scales, samples=args.samples, seed=args.seed,
        overrides=overrides, device=args.device, warehouse=str(Path(args.warehouse).expanduser().resolve()),
        shard_size=args.shard_size, layer_threshold=args.layer_threshold or None,
        carry_over=args.carry_over or None, matched=args.matched,
        match_threshold=args.match_threshold,
        out_dir=str(Path(args.out_dir).resolve()) if args.out_dir else None,
        collect=False if getattr(args, "no_collect", False) else None,
        score=False if getattr(args, "no_score", False) else None,
        corpus=getattr(args, "corpus", None), collect_tokens=getattr(args, "collect_tokens", None),
    )


def check_sae_cheaply(request) -> None:
    """An SAE of no known form, or features beyond its width where its cfg.json or header tells
    it, answer before Prefect is imported (a second and a half of start-up); the flow's
    preflight checks the rest."""
    from selfexplain.saes import check_features, check_sae_spec, peek_width

    check_sae_spec(request.sae)
    width = peek_width(request.sae)
    if width is not None and not request.all_features:
        check_features(request.feature_list(width), width)


def run(args: argparse.Namespace) -> int:
    request = build_request(args)  # validates every flag before anything slow starts
    check_sae_cheaply(request)
    from flows.relabel import run_relabel

    began = None

    def announce(line: str) -> None:
        nonlocal began
        print(line, flush=True)
        began = time.perf_counter()

    summary = run_relabel(request, announce)
    elapsed = time.perf_counter() - began
    print()
    print(f"done in {elapsed:.0f} s: {summary['n_labelled']} labelled, {summary['n_failed']} "
          f"flagged as likely failures, {summary['n_skipped']} skipped; "
          f"{summary['n_shards']} shard{'' if summary['n_shards'] == 1 else 's'} run, "
          f"{summary['n_shards_skipped']} already stored")
    if request.out_dir is not None:
        print(f"Parquet shards: {request.out_dir}")
        print(f"merge them:     selfexplain import --shards {request.out_dir} "
              f"--warehouse {request.warehouse}")
        return 0
    carried = summary.get("carry_over")
    if carried:
        for source in carried["sources"]:
            print(f"carried over from {source['release']}/{source['sae_id']}: "
                  f"{source['matched']} matched, {source['new']} new, {source['vanished']} "
                  "vanished (selfexplain diff shows the label changes)")
        for reason in carried["skipped_sources"]:
            print(f"carry-over source skipped: {reason}")
    _preview(request.warehouse, summary)
    print(f"warehouse: {request.warehouse}")
    if summary.get("png"):
        print(f"scale sweep plot: {summary['png']}")
    print("query it:")
    print(f'  selfexplain sql "{summary["query"]}"')
    return 0


def _preview(warehouse: str, summary: dict) -> None:
    import polars as pl

    from selfexplain.warehouse_read import open_reader

    with open_reader(warehouse) as wh:
        labels = wh.query(
            "SELECT feature, left(regexp_replace(label, '\\s+', ' ', 'g'), 28) AS label, "
            "left(regexp_replace(recovered_token, '\\s+', ' ', 'g'), 16) AS recovered_token, "
            "round(scale, 1) AS scale, round(max_roundtrip, 3) AS round_trip, failed, "
            "round(detection_auroc, 2) AS detect, round(detection_auroc_hard, 2) AS detect_hard, "
            "left(array_to_string(list_transform(top_tokens[1:4], lambda t: trim(t)), ' | '), 32) "
            "AS fires_on FROM v_feature_labels "
            "WHERE release = ? AND sae_id = ? ORDER BY feature",
            [summary["release"], summary["sae_id"]])
        skipped = wh.query(
            "SELECT feature, failure_reason FROM v_feature_labels WHERE release = ? "
            "AND sae_id = ? AND skipped AND run_id = ? ORDER BY feature",
            [summary["release"], summary["sae_id"], summary["run_id"]])
    with pl.Config(tbl_rows=20, tbl_cols=-1, fmt_str_lengths=32, tbl_width_chars=160,
                   tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        print(labels)
    for feature, reason in skipped.iter_rows():
        print(f"skipped feature {feature}: {reason}")
    scored = labels.filter(pl.col("detect").is_not_null())
    if scored.height:
        print(f"held-out detection AUROC (MiniLM, label vs contexts it fires on): mean "
              f"{scored['detect'].mean():.2f} against random text, "
              f"{scored['detect_hard'].mean():.2f} against its nearest latents' text (0.5 = chance)")
