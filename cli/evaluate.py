"""`selfexplain evaluate`: how good are the labels? Methods x metrics with counts and 95% CIs."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from cli.explain import ADAPTER_HELP, add_runtime_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score self-explanation and baselines offline (planted concepts, real SAE features)",
        description="Planted concepts (word directions with known answers) and/or real features "
        "of the SAE; self-explanation (default, faithful) side by side with VocabProj, "
        "TokenChange and max-activating tokens. Prints methods x metrics with counts and 95% "
        "intervals; --out writes a report (markdown + PNG).",
    )
    parser.add_argument("--suite", choices=["planted", "real", "all"], default="planted")
    parser.add_argument("--limit", type=int, default=50,
                        help="planted: first N words of the split; real: N sampled features")
    parser.add_argument("--split", choices=["dev", "test"], default="dev",
                        help="planted word list (tune on dev only)")
    parser.add_argument("--methods", help="comma list of default,faithful,decoder (the default "
                        "preset on decoder rows),vocabproj,tokenchange,maxact (default: all but "
                        "faithful and decoder; --thorough adds faithful)")
    parser.add_argument("--thorough", action="store_true",
                        help="also the faithful preset, the random-direction null (32) and the "
                        "best-scale check: several times slower than the quick default")
    parser.add_argument("--rerank", default=None,
                        help="selection strategies re-scored on the same samples "
                        "(default: composite,selfsim,entropy,consensus,roundtrip; 'none' to skip)")
    parser.add_argument("--no-classes", action="store_true", help="planted: words only")
    parser.add_argument("--no-scale-quality", action="store_true",
                        help="skip the best-scale check (label NLL per scale)")
    parser.add_argument("--null", type=int, default=None,
                        help="random directions per method for the failure-threshold null "
                        "(default 0; --thorough: 32)")
    parser.add_argument("--direction", choices=["decoder", "input", "auto"], default=None,
                        help="real suite: inject each latent's decoder row, its typical input, "
                        "or auto (the preset's own: default auto, faithful decoder)")
    parser.add_argument("--adapter", default=None, help=ADAPTER_HELP)
    parser.add_argument("--seed", type=int, default=0)
    add_runtime_arguments(parser)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own; "
                        "1 is much faster when other jobs share the cores)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--sae", default="default", help="for --suite real/all")
    parser.add_argument("--judge-detection", action="store_true",
                        help="real suite: also score every label with the LLM judge (delphi's "
                        "detection and fuzzing: balanced accuracy on held-out examples; needs "
                        "SELFEXPLAIN_JUDGE_URL)")
    parser.add_argument("--references", help="reference labels (Neuronpedia JSON/JSONL or CSV) "
                        "to import and, with a judge endpoint configured, to judge against")
    parser.add_argument("--out", help="folder for report.md, summary.csv, items.parquet, PNGs")
    parser.add_argument("--warehouse", help="also upsert eval_result / layer_threshold rows here")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON rows")
    parser.set_defaults(handler=run)


def request_from_args(args: argparse.Namespace):
    from selfexplain.errors import build_validated
    from selfexplain.evaluation.suite import DEFAULT_METHODS, RERANK_STRATEGIES, EvalRequest

    thorough = getattr(args, "thorough", False)
    methods = (tuple(m.strip() for m in args.methods.split(",") if m.strip())
               if args.methods else DEFAULT_METHODS if thorough
               else tuple(m for m in DEFAULT_METHODS if m != "faithful"))
    if args.suite == "planted" and not args.methods:
        methods = tuple(m for m in methods if m != "maxact")
    rerank = RERANK_STRATEGIES
    if args.rerank is not None:
        rerank = () if args.rerank == "none" else tuple(
            s.strip() for s in args.rerank.split(",") if s.strip())
    return build_validated(EvalRequest, dict(
        suite=args.suite, limit=args.limit, split=args.split, methods=methods,
        classes=not args.no_classes, rerank=rerank,
        scale_quality=thorough and not args.no_scale_quality,
        null_directions=args.null if args.null is not None else 32 if thorough else 0,
        seed=args.seed, sae=args.sae, model=args.model,
        overrides={"precision": args.precision,
                   **({"direction": args.direction} if args.direction else {}),
                   **({"adapter": args.adapter} if args.adapter else {})},
    ), "request")


def run(args: argparse.Namespace) -> int:
    from selfexplain.models import resolve_device

    request = request_from_args(args)  # validate before the slow loads
    device = resolve_device(args.device)
    from selfexplain.evaluation import judge as judge_mod

    endpoint = judge_mod.JudgeEndpoint.from_env(os.environ)
    cache = None
    if endpoint is not None and args.references:  # read before the slow loads: fails fast
        cache = judge_cache(args.warehouse, args.out)
    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:6.1f}s] {message}", file=sys.stderr, flush=True)

    import torch

    from selfexplain.evaluation.report import pivot_text, write_report
    from selfexplain.evaluation.suite import eval_result_rows, run_evaluation
    from selfexplain.config import torch_dtype
    from selfexplain.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    sae = stats = None
    if request.suite in ("real", "all"):  # the SAE and its statistics first: a wrong one fails fast
        log(f"loading SAE {request.sae}")
        sae, stats = load_sae_and_stats(request.sae)
    log(f"loading model {request.model}")
    lm = load_model(request.model, dtype=torch_dtype(request.precision), device=device)
    output = run_evaluation(lm, request, sae=sae, stats=stats, log=log,
                            runs_dir=f"{args.out}/runs" if args.out else None)
    references = None
    if args.references:
        from selfexplain.references import read_reference_labels

        references = read_reference_labels(
            args.references, release=sae.release if sae else None,
            sae_id=sae.sae_id if sae else None)
        output.notes.append(f"imported {references.height} reference labels from {args.references}")
        if endpoint is None:
            output.notes.append(judge_mod.SKIP_MESSAGE)
            print(judge_mod.SKIP_MESSAGE, file=sys.stderr)
        elif "real" in output.items:
            output.summaries.append(judge_real(output, references, endpoint, cache))
    if args.judge_detection:
        if endpoint is None:
            output.notes.append(judge_mod.SKIP_MESSAGE)
            print(judge_mod.SKIP_MESSAGE, file=sys.stderr)
        elif "real" in output.items and sae is not None and sae.stats_dir is not None:
            log("real: LLM detection of every label on the held-out examples")
            cache = cache or judge_cache(args.warehouse, args.out)
            output.summaries.append(judge_detection(output, sae, endpoint, cache))
    output.timings["total"] = round(time.perf_counter() - began, 1)
    summary = output.summary
    if args.json:
        print(json.dumps(summary.to_dicts(), default=str))
    else:
        print(pivot_text(summary))
        print("\nnotes:\n" + "\n".join(f"- {n}" for n in output.notes))
        print("timings (s): " + ", ".join(f"{k} {v}" for k, v in output.timings.items()))
    if args.out:
        path = write_report(
            args.out, summary, title=f"selfexplain evaluate --suite {request.suite}",
            notes=output.notes + [f"timings (s): {output.timings}", f"model: {lm.model_id} "
                                  f"({lm.revision})"],
            curves=output.curves, null=output.null, thresholds=output.thresholds,
            observed=output.observed,
            tables={"layer_thresholds": output.layer_thresholds, "null": output.null_frame})
        for name, frame in output.items.items():
            frame.write_parquet(f"{args.out}/items_{name}.parquet")
        log(f"report written to {path}")
    if args.warehouse:
        eval_id = f"eval-{int(time.time())}-{request.suite}-{request.split}"
        frames = {
            "eval_result": eval_result_rows(
                output, eval_id=eval_id, model_id=lm.model_id,
                sae_release=sae.release if sae else "", sae_id=sae.sae_id if sae else ""),
            "layer_threshold": output.layer_thresholds,
        }
        if references is not None:
            frames["reference_label"] = references
        if cache is not None:  # the judge's new answers: a rerun asks nothing again
            frames["judge_response"] = cache.new_rows()
        from selfexplain.runlock import write_locked

        # a relabel holding the warehouse: wait up to 10 minutes rather than lose this run
        counts = write_locked(args.warehouse, frames, wait_s=600)
        log(f"warehouse {args.warehouse}: {counts} (eval_id {eval_id})")
    return 0


def load_sae_and_stats(spec: str):
    """The SAE and its feature statistics (shipped or collected: `statstore`)."""
    from selfexplain.evaluation.real import feature_stats_for
    from selfexplain.statstore import load_sae

    sae = load_sae(spec)
    return sae, feature_stats_for(spec, sae)


def judge_cache(warehouse: str | None, out_dir: str | None):
    """The judge's cache: the warehouse's `judge_response` rows (a read-only read; the run writes
    its new answers at the end) and `<out_dir>/judge_cache.jsonl`."""
    from pathlib import Path

    from selfexplain.evaluation.judge import JudgeCache
    from selfexplain.warehouse import Warehouse

    rows = None
    if warehouse is not None and Path(warehouse).is_file():
        with Warehouse(warehouse, read_only=True, wait_s=10) as reader:
            if "judge_response" in reader.tables():  # an older warehouse gains it on write
                rows = reader.table("judge_response")
    return JudgeCache(None if out_dir is None else f"{out_dir}/judge_cache.jsonl", rows=rows)


def judge_detection(output, sae, endpoint, cache=None):
    """delphi's detection and fuzzing scorers: the judge tells activating from non-activating
    held-out examples (random and hard negatives), and rightly from wrongly marked tokens, given
    each method's label; balanced accuracy."""
    from selfexplain.evaluation import judge as judge_mod
    from selfexplain.evaluation.stats import summarise_mean
    from selfexplain.scoring import HeldoutSet, JudgeDetectionScorer, JudgeFuzzingScorer

    held, judge = HeldoutSet.load(sae.stats_dir), judge_mod.Judge(endpoint, cache)
    items = output.items["real"]
    features, labels = items["feature"].to_list(), items["label"].to_list()
    detection = JudgeDetectionScorer(held, sae.decoder, judge).score(features, labels)
    columns = [detection["judge_detection"], detection["judge_detection_hard"]]
    if held.sample_positions is not None:  # statistics of collect format 2 and later
        columns.append(JudgeFuzzingScorer(held, sae.decoder, judge).score(
            features, labels)["judge_fuzzing"])
    output.items["real"] = items.with_columns(columns)
    return summarise_mean(output.items["real"], [c.name for c in columns],
                          suite="heldout_judge")


def judge_real(output, references, endpoint, cache=None):
    """Ask the judge whether any top-3 label matches the reference, for each method's labels."""
    import polars as pl

    from selfexplain.evaluation import judge as judge_mod
    from selfexplain.evaluation.stats import summarise_binary

    judge = judge_mod.Judge(endpoint, cache)
    items = output.items["real"].join(
        references.select(pl.col("feature").cast(pl.Int64), pl.col("description").alias("reference")),
        on="feature", how="inner",
    )
    rows = judge_mod.judge_rows(judge, items)
    output.items["judge"] = rows
    return summarise_binary(rows, ("judge_match",), suite="judge")
