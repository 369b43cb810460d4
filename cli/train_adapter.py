"""`selfexplain train-adapter`: learn a self-interpretation adapter for a model and layer."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-adapter",
        help="learn the affine map of injected vectors that makes the model read its directions",
        description="Keep the model frozen and learn injected = a * s * unit(v) + b (d_model + 1 "
        "parameters) from vector-label pairs: vocabulary words' own residuals (the planted DEV "
        "and TEST words left out) and, with an SAE that has statistics, the single-token TRAIN "
        "latents (ids % 4 == 0). Killed, the same command resumes. Use the result with "
        "--adapter PATH on explain, relabel and evaluate.",
    )
    parser.add_argument("--out", required=True, help="the adapter file to write (.safetensors)")
    parser.add_argument("--model", default="default", help="`default`, a HF id or folder, a .gguf")
    parser.add_argument("--sae", default="default",
                        help="an SAE whose TRAIN latents join the words (`none`: words only)")
    parser.add_argument("--layer", type=int, default=2, help="the injection layer (default 2)")
    parser.add_argument("--words", type=int, default=1000, help="vocabulary words (default 1000)")
    parser.add_argument("--latents", type=int, default=250,
                        help="single-token TRAIN latents (default 250; 0: words only)")
    parser.add_argument("--latent-source", choices=["decoder", "input", "both"], default="decoder",
                        help="the latents' rows: decoder rows (what a bare SAE injects), typical "
                        "inputs, or both")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--scale-bias", action="store_true",
                        help="also learn a bias linear in the scale (2 d_model + 1 parameters)")
    parser.add_argument("--meaning-target", choices=["self", "word"], default="self",
                        help="the meaning prompt's target: the model's own answer for the literal "
                        "word (default) or the word itself")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["auto", "bfloat16", "float32"], default="auto",
                        help="default auto: bfloat16 where the device runs it natively, else "
                        "float32")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--json", action="store_true", help="print the training record as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    import torch

    from selfexplain.adapter import check_adapter_path, describe
    from selfexplain.adapter_training import AdapterTrainConfig, train_adapter, training_pairs
    from selfexplain.errors import build_validated
    from selfexplain.models import load_model, resolve_device, resolve_precision
    from selfexplain.statstore import load_sae
    from selfexplain.statstore import load_stats_frame

    config = build_validated(AdapterTrainConfig, dict(
        injection_layer=args.layer, steps=args.steps, batch_size=args.batch_size,
        learning_rate=args.learning_rate, scale_bias=args.scale_bias,
        meaning_target=args.meaning_target, seed=args.seed))
    check_adapter_path(args.out)  # before the slow loads
    sae = stats = None
    if args.sae != "none" and args.latents:
        sae = load_sae(args.sae)  # an unknown SAE answers before the model loads
        stats = load_stats_frame(sae)
        if stats is None:
            print(f"note: {args.sae} has no statistics (selfexplain collect --sae {args.sae}): "
                  "training on words only")
    lm = load_model(args.model, dtype=getattr(torch, resolve_precision(args.precision, args.device)),
                    device=resolve_device(args.device))
    if sae is not None:
        sae.check_fits(lm.d_model, lm.n_layers)
    train_pairs, dev_pairs = training_pairs(lm, args.layer, words=args.words, sae=sae, stats=stats,
                                            latents=args.latents, latent_source=args.latent_source,
                                            seed=args.seed)
    print(f"{len(train_pairs)} training pairs, {len(dev_pairs)} DEV pairs; generating the meaning "
          "targets, then training")
    bars: list = []  # made at the first step: its rate is the training's, not the targets'

    def progress(step: int, loss: float) -> None:
        if not bars:
            bars.append(tqdm(total=config.steps, initial=step - 1, unit="step",
                             desc="train-adapter", dynamic_ncols=True))
        bars[0].update(step - bars[0].n)
        bars[0].set_postfix(loss=f"{loss:.3f}")

    try:
        adapter = train_adapter(lm, config, args.out, train_pairs=train_pairs, dev_pairs=dev_pairs,
                                progress=progress)
    finally:
        for bar in bars:
            bar.close()
    print(describe(adapter))
    print(f"adapter: {args.out}")
    print(f"next: selfexplain explain --model {args.model} --adapter {args.out} --word ' dog'")
    if args.json:
        print(json.dumps(json.loads(adapter.info)))
    return 0
