"""`selfexplain explain`: explain SAE features, vectors from a file, or planted words."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="explain SAE features, a vector file, or a word's planted direction",
        description="Inject each direction at the placeholder, sweep the scale, sample and rank "
        "explanations. Exactly one of --sae, --vector, --word.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--sae", help="`default`, RELEASE/SAE_ID, a sae-lens folder, or a .safetensors with W_dec")
    source.add_argument("--vector", help="a .npy/.pt/.safetensors file with a (d,) or (n, d) array")
    source.add_argument("--word", action="append", help="a word whose own residual is explained "
                        "(planted concept); repeat the flag for several, e.g. --word ' dog'")
    parser.add_argument("--features", help="with --sae: indices like 0-7 or 12,40")
    parser.add_argument("--key", help="with --vector: which tensor of a multi-tensor file")
    add_config_arguments(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per feature")
    parser.add_argument("--full", action="store_true", help="with --json: every candidate and sweep")
    parser.set_defaults(handler=run)


ADAPTER_HELP = ("a learned self-interpretation adapter: auto (the one shipped for the default "
                "model, when the model is that model), default (insist on it), none (inject "
                "scale x direction, the published method) or a file from train-adapter "
                "(default: the preset's own)")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that builds an ExplainConfig."""
    parser.add_argument("--model", default="default", help="`default`, a HF id or folder, or a .gguf file")
    parser.add_argument("--preset", default="default", choices=["default", "faithful"])
    parser.add_argument("--scales", help="metric grid: 0,10,20 or start:stop:count (in the preset's unit)")
    parser.add_argument("--scale-unit", choices=["absolute", "relative"])
    parser.add_argument("--samples", type=int, help="samples per generation scale")
    parser.add_argument("--selection", choices=["composite", "selfsim", "entropy", "consensus", "roundtrip"])
    parser.add_argument("--seed", type=int)
    parser.add_argument("--placeholder")
    parser.add_argument("--injection-layer", type=int)
    parser.add_argument("--probe-layer", type=int)
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--failure-metric", choices=["selfsim", "roundtrip"],
                        help="what the failure flag reads (default: roundtrip; faithful: selfsim)")
    parser.add_argument("--failure-threshold", type=float)
    parser.add_argument("--direction", choices=["decoder", "input", "auto"],
                        help="SAE latents: inject the decoder row, the latent's typical input, "
                        "or auto: the typical input when the SAE ships it (default preset)")
    parser.add_argument("--adapter", help=ADAPTER_HELP)
    add_runtime_arguments(parser)


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Where and in what precision the model runs (explain, relabel, scale-out, evaluate)."""
    # config.Precision's values, spelled out: parsing stays free of pydantic's import
    parser.add_argument("--precision", choices=["auto", "bfloat16", "float32"], default="auto",
                        help="model weights and activations (default auto: bfloat16 where the "
                        "device runs it natively, a GPU or a CPU with AVX512-BF16/AMX, at 4x "
                        "float32's matmul throughput; else float32, as emulated bfloat16 is "
                        "several times slower)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")


def config_from_args(args: argparse.Namespace):
    from selfexplain.config import ExplainConfig, parse_scales
    from selfexplain.models import resolve_precision

    return ExplainConfig.from_preset(
        args.preset,
        metric_scales=parse_scales(args.scales) if args.scales is not None else None,
        scale_unit=args.scale_unit,
        samples_per_scale=args.samples,
        selection=args.selection,
        seed=args.seed,
        placeholder=args.placeholder,
        injection_layer=args.injection_layer,
        probe_layer=args.probe_layer,
        max_new_tokens=args.max_new_tokens,
        failure_metric=args.failure_metric,
        failure_threshold=args.failure_threshold,
        direction=args.direction,
        adapter=args.adapter,
        precision=resolve_precision(args.precision, args.device),
    )


def run(args: argparse.Namespace) -> int:
    from selfexplain.errors import InputError

    from selfexplain.models import resolve_device

    config = config_from_args(args)  # validate flags before the slow model load
    device = resolve_device(args.device)
    if args.sae and not args.features:
        raise InputError("--sae needs --features, e.g. --features 0-7")
    if args.features and not args.sae:
        raise InputError("--features only applies with --sae")
    # Read every input (SAE config and decoder, vector file, feature range) before the model:
    # a wrong path or index answers in seconds, not after the model load.
    features = sae = directions = None
    if args.sae:
        from selfexplain.saes import check_features, parse_features, peek_width

        features = parse_features(args.features)
        width = peek_width(args.sae)  # the range from the SAE's config, before sae-lens loads
        if width is not None:
            check_features(features, width)
        from selfexplain.statstore import load_sae

        sae = load_sae(args.sae)
        check_features(features, sae.d_sae)
        sae.unit_directions(features[:1], config.direction)  # an SAE without typical inputs
        if config.direction == "auto" and sae.inputs is None:
            print(f"note: {args.sae} has no statistics yet, so decoder rows are injected (weaker "
                  f"labels); `selfexplain collect --sae {args.sae}` computes its typical inputs",
                  file=sys.stderr)
    elif args.vector:
        from selfexplain.vectors import load_vectors

        directions = load_vectors(args.vector, args.key)
    from selfexplain.config import check_layers
    from selfexplain.models import peek_dims

    dims = peek_dims(args.model)  # the model's shape from its config.json, when that is cheap
    if dims is not None:
        n_layers, d_model = dims
        check_layers(config.injection_layer, config.probe_layer, n_layers)
        if sae is not None:
            sae.check_fits(d_model, n_layers)
        if directions is not None:
            check_width(directions, d_model)

    import torch
    from tqdm import tqdm

    from selfexplain.explain import SelfExplainer
    from selfexplain.models import load_model

    torch.set_num_threads(max(1, torch.get_num_threads()))
    lm = load_model(args.model, dtype=config.torch_dtype, device=device)
    explainer = SelfExplainer(lm, config)
    skipped = []
    if sae is not None:
        from selfexplain.explain import explain_sae_features

        with tqdm(total=len(features), desc="features", unit="feat", file=sys.stderr,
                  disable=len(features) < 2) as bar:
            results, skipped = explain_sae_features(lm, sae, features, config,
                                                    progress=bar.update, explainer=explainer)
    else:
        if directions is not None:
            names = [f"{args.vector}[{i}]" for i in range(directions.shape[0])]
        else:
            from selfexplain.vectors import word_directions

            directions = word_directions(lm, args.word, config.injection_layer)
            names = list(args.word)
        check_width(directions, lm.d_model)
        with tqdm(total=len(names), desc="directions", file=sys.stderr,
                  disable=len(names) < 2) as bar:
            results = explainer.explain(directions, list(range(len(names))), names, bar.update)
    for skip in skipped:
        print(f"skipped feature {skip.feature}: {skip.reason}", file=sys.stderr)
    for result in results:
        if args.json:
            print(json.dumps(result.to_dict(full=args.full)))
        else:
            print(format_result(result))
    return 0


def check_width(directions, d_model: int) -> None:
    """Directions (n, width) must live in the model's residual stream (d_model)."""
    from selfexplain.errors import InputError

    if directions.shape[1] != d_model:
        raise InputError(
            f"vectors have width {directions.shape[1]} but the model's residual is {d_model}"
        )


def format_result(result) -> str:
    """A few human lines per feature: top explanations, recovered token, failure flag."""
    status = f"FAILED ({result.failure_reason})" if result.failed else "ok"
    trip = "" if result.max_roundtrip is None else f", best round trip {result.max_roundtrip:.3f}"
    lines = [f"{result.name}  [{status}, max selfsim {result.max_selfsim:.3f}{trip}, "
             f"{result.seconds:.1f}s]"]
    for i, cand in enumerate(result.explanations, 1):
        extra = f", round trip {cand.extra['roundtrip']:.3f}" if "roundtrip" in cand.extra else ""
        lines.append(f"  {i}. {cand.text!r}  (scale {cand.scale:.1f}, composite "
                     f"{cand.composite:.3f}{extra})")
    if not result.explanations:
        lines.append("  (no non-empty explanation sampled)")
    reliable = "reliable" if result.recovered_reliable else "unreliable"
    lines.append(f"  token: {result.recovered_token!r} ({reliable})")
    return "\n".join(lines)
