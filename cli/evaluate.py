"""`selfexplain evaluate`: how good are the labels? Methods x metrics with counts and 95% CIs.

Parses the flags into the `evaluate` flow's parameters and runs the flow in-process (an
ephemeral Prefect server, or the one PREFECT_API_URL points at; `flows.evaluate.run_evaluate`
checks the SAE, judge cache and reference labels before Prefect starts), then prints the
summary the flow returns."""

from __future__ import annotations

import argparse
import json
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
        "intervals; --out writes a report (markdown + PNG). Runs the `evaluate` Prefect flow "
        "in-process (an ephemeral Prefect server, or the one PREFECT_API_URL points at).",
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
    parser.add_argument("--out", help="folder for report.md, summary.csv, items_<suite>.parquet, "
                        "PNGs and runs/ (the saved planted runs)")
    parser.add_argument("--warehouse", help="also upsert eval_result / layer_threshold rows here "
                        "(and reference_label, judge_response with --references)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON rows")
    parser.set_defaults(handler=run)


def request_from_args(args: argparse.Namespace):
    from selfexplain.errors import build_validated
    from selfexplain.evaluation.suite import DEFAULT_METHODS, RERANK_STRATEGIES, EvalRequest
    from selfexplain.models import resolve_precision

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
        overrides={"precision": resolve_precision(args.precision, args.device),
                   **({"direction": args.direction} if args.direction else {}),
                   **({"adapter": args.adapter} if args.adapter else {})},
    ), "request")


def params_from_args(args: argparse.Namespace):
    """The flow's parameters: the request, the judge steps, where the results go."""
    request = request_from_args(args)  # a bad flag answers before Prefect is imported
    from selfexplain.saes import check_sae_spec

    check_sae_spec(request.sae)  # an SAE of no known form too
    from flows.evaluate import EvaluateParams
    from selfexplain.errors import build_validated

    return build_validated(EvaluateParams, dict(
        request=request, out_dir=args.out, warehouse=args.warehouse,
        references=args.references, judge_detection=args.judge_detection,
        device=args.device, threads=args.threads,
    ), "parameters")


def run(args: argparse.Namespace) -> int:
    params = params_from_args(args)  # validate before the slow loads
    from flows.evaluate import run_evaluate

    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:6.1f}s] {message}", file=sys.stderr, flush=True)

    result = run_evaluate(params, log)
    if args.json:
        print(json.dumps(result["summary"], default=str))
        return 0
    from selfexplain.evaluation.report import pivot_text
    from selfexplain.evaluation.stats import summary_frame

    print(pivot_text(summary_frame(result["summary"])))
    print("\nnotes:\n" + "\n".join(f"- {n}" for n in result["notes"]))
    print("timings (s): " + ", ".join(f"{k} {v}" for k, v in result["timings"].items()))
    return 0
