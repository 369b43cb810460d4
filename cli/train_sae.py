"""`selfexplain train-sae`: train a TopK SAE on a local corpus and write a sae-lens folder.

Parses the flags into a `TrainSaeRequest` (the corpus is never built here: a missing or empty
--corpus is an error) and runs the `train-default-sae` flow in-process
(`flows.train_default_sae.run_train_sae`: corpus and --out checked before Prefect starts), then
prints the training report as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-sae",
        help="train a TopK SAE on the residual entering one block (plus feature statistics)",
        description="Collect residual activations entering --layer from a local corpus (build "
        "one with `python scripts/build_corpus.py`), train a TopK SAE, and write a sae-lens "
        "folder (cfg.json, sae_weights.safetensors, feature_stats.parquet) atomically. Runs the "
        "`train-default-sae` Prefect flow in-process (an ephemeral Prefect server, or the one "
        "PREFECT_API_URL points at).",
    )
    parser.add_argument("--model", default="default", help="`default`, a HF folder, or a .gguf file")
    parser.add_argument("--corpus", default="corpus", type=Path, help="folder of .txt files")
    parser.add_argument("--out", required=True, type=Path, help="the SAE folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--layer", type=int, help="residual entering this block (default 2)")
    parser.add_argument("--width", type=int, help="latents (default 4096)")
    parser.add_argument("--k", type=int, help="active latents per token (default 8)")
    parser.add_argument("--tokens", type=int, help="training activations (default 20000000, capped by the corpus)")
    parser.add_argument("--heldout-tokens", type=int, help="held-out activations: the report's "
                        "numbers and the feature statistics come from them (default 100000)")
    parser.add_argument("--context", type=int, help="tokens per window (default 128)")
    parser.add_argument("--batch-tokens", type=int, help="activations per step (default 1024)")
    parser.add_argument("--epochs", type=int, help="passes over the activations (default 1)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default 2e-4*sqrt(16384/width))")
    parser.add_argument("--collect-dtype", choices=["float32", "bfloat16"],
                        help="model precision while collecting training activations (default bfloat16)")
    parser.add_argument("--chunk-windows", type=int,
                        help="windows collected at a time (default 2048: 0.5 GiB of activations)")
    parser.add_argument("--checkpoint-dir", type=Path,
                        help="save the training state here after every few chunks and resume "
                        "from it when the same command runs again")
    parser.add_argument("--stop-after-chunks", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help="default 0")
    parser.add_argument("--no-stats", action="store_true", help="skip feature_stats.parquet")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from selfexplain.sae_trainer import TrainSaeConfig

    config = TrainSaeConfig.build(
        layer=args.layer, width=args.width, k=args.k, tokens=args.tokens,
        heldout_tokens=args.heldout_tokens, context=args.context, batch_tokens=args.batch_tokens,
        epochs=args.epochs, lr=args.lr, collect_dtype=args.collect_dtype, seed=args.seed,
        chunk_windows=args.chunk_windows,
    )  # nonsense settings answer before Prefect is imported
    from selfexplain.corpus import corpus_files

    corpus_files(args.corpus)  # and so does a missing or empty corpus
    from flows.train_default_sae import TrainSaeRequest, run_train_sae

    request = TrainSaeRequest.build(
        model=args.model, corpus_dir=str(args.corpus), build_corpus=False,
        out_dir=str(args.out.expanduser()), overwrite=args.overwrite,
        checkpoint_dir=None if args.checkpoint_dir is None else str(args.checkpoint_dir),
        stop_after_chunks=args.stop_after_chunks, train=config, statistics=not args.no_stats,
    )
    result = run_train_sae(request, announce=print)  # the corpus and --out checked first
    if result["report"] is None:
        print(f"stopped after {result['stopped_after_chunks']} chunks; state saved in "
              f"{args.checkpoint_dir}")
        return 0
    print(json.dumps(result["report"]))
    return 0
