"""`selfexplain collect`: statistics, typical inputs and held-out examples for any SAE."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="compute an SAE's feature statistics, typical inputs and held-out examples",
        description="Stream a corpus through the model and the SAE and keep, for every latent, "
        "density, activations, top tokens and contexts and its typical input (from training "
        "documents), and held-out examples for scoring labels (from other documents). Results "
        "go to a cache keyed by the SAE's weights, where explain, relabel, show, the browser and "
        "evaluate find them. Killed, the same command resumes; run again, it reuses them.",
    )
    parser.add_argument("--sae", required=True,
                        help="`default`, RELEASE/SAE_ID, a sae-lens folder, or a .safetensors file "
                        "with W_enc and W_dec")
    parser.add_argument("--model", default="default", help="`default`, a HF id or folder, a .gguf")
    parser.add_argument("--corpus", default="default",
                        help="`default` (the embedded sample of the default SAE's corpus), a folder "
                        "of .txt files, a Parquet/JSONL file, or hf:NAME[:CONFIG]")
    parser.add_argument("--text-column", default="text", help="text column of a Parquet/JSONL/HF corpus")
    parser.add_argument("--tokens", type=int, help="training-document activations (default 1000000)")
    parser.add_argument("--heldout-tokens", type=int,
                        help="held-out activations for label scoring (default 250000; 0 skips)")
    parser.add_argument("--context", type=int, help="tokens per window (default: the SAE's, <= 256)")
    parser.add_argument("--seed", type=int, help="document split seed (default: the SAE's own, else 0)")
    parser.add_argument("--layer", type=int,
                        help="the SAE reads the residual entering this block (for SAEs whose "
                        "config does not say)")
    parser.add_argument("--hook", dest="hook_name", help="or its hook, blocks.L.hook_resid_pre/post")
    parser.add_argument("--k", type=int, help="TopK of a bare .safetensors SAE (else ReLU)")
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                        help="model matmuls while reading activations (bfloat16: CPU autocast)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--force", action="store_true", help="collect again even if stored")
    parser.add_argument("--stop-after-chunks", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from selfexplain.collect import CollectConfig
    from selfexplain.documents import open_documents
    from selfexplain.models import load_model, peek_dims, resolve_device
    from selfexplain.saes import SaeDirections
    from selfexplain.statstore import load_sae
    from selfexplain.statstore import collect_statistics

    config = CollectConfig.build(tokens=args.tokens, heldout_tokens=args.heldout_tokens,
                                 context=args.context, seed=args.seed, dtype=args.precision)
    device = resolve_device(args.device)
    open_documents(args.corpus, text_column=args.text_column)  # a missing corpus: say so now
    sae: SaeDirections = load_sae(args.sae, statistics=False)  # a corrupt or unknown SAE: now
    dims = peek_dims(args.model)
    if dims is not None:
        sae.check_fits(dims[1], dims[0])
    lm = load_model(args.model, device=device)
    bar = tqdm(total=None, unit="tok", unit_scale=True, desc="collect", dynamic_ncols=True)

    def progress(done: int, total: int, phase: str) -> None:
        bar.total = total
        bar.set_description(f"collect {phase}")
        bar.update(done)

    try:
        result = collect_statistics(lm, args.sae, args.corpus, config, layer=args.layer,
                                    hook_name=args.hook_name, k=args.k,
                                    text_column=args.text_column, force=args.force,
                                    progress=progress, stop_after_chunks=args.stop_after_chunks)
    finally:
        bar.close()
    if result is None:
        print(f"stopped after {args.stop_after_chunks} chunks; run the same command to resume")
        return 0
    m = result.manifest
    how = "reused (already collected)" if result.reused else (
        "resumed and finished" if result.resumed else "collected")
    print(f"{how}: {m['train_tokens']:,} training and {m['heldout_tokens']:,} held-out tokens of "
          f"corpus {m['corpus']} for {m['release']}/{m['sae_id']} ({m['d_sae']} latents, "
          f"{m['dead_latents']} never fired, {m['single_token_latents']} single-token) in "
          f"{m['seconds']:.0f} s ({m['tokens_per_second']:,.0f} tokens/s)")
    print(f"statistics: {result.folder}")
    print(f"next: selfexplain relabel --sae {args.sae} --features 0-15   (injects typical inputs)")
    if getattr(args, "json", False):
        print(json.dumps(m))
    return 0
