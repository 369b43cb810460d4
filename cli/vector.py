"""`selfexplain vector`: a steering direction by difference of means, ready for `explain --vector`.

The residual entering --layer at the last token of each prompt (rendered with the model's chat
template, as the model sees a request), averaged over the positive and the negative prompts; the
difference is saved as .safetensors with its metadata. `--pair refusal` (harmful vs harmless
requests) and `--pair sentiment` (positive vs negative sentences) use the prompt sets shipped in
`selfexplain/data/prompts/`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import selfexplain

PROMPTS = Path(selfexplain.__file__).resolve().parent / "data" / "prompts"
"""The prompt sets the core package ships (`selfexplain/data/prompts/`)."""
PAIRS = {"refusal": ("harmful.txt", "harmless.txt"), "sentiment": ("positive.txt", "negative.txt")}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "vector",
        help="build a steering direction by difference of means between two prompt sets",
        description="mean(residual | positive prompts) - mean(residual | negative prompts), at "
        "the last token, entering --layer (default: the engine's injection layer, so the vector "
        "lives where `explain --vector` injects it). Saved as .safetensors with its metadata.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pair", choices=sorted(PAIRS), help="a shipped pair of prompt sets")
    source.add_argument("--positive", help="a text file, one prompt per line (# comments)")
    parser.add_argument("--negative", help="with --positive: the contrasting prompts")
    parser.add_argument("--model", default="default", help="`default`, `gemma3-270m`, a HF id or "
                        "folder, or a .gguf file")
    parser.add_argument("--layer", type=int, help="residual entering this block (default: the "
                        "injection layer of the default preset)")
    parser.add_argument("--raw", action="store_true",
                        help="use the prompts as plain text, not inside the chat template")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from selfexplain.config import ExplainConfig
    from selfexplain.errors import InputError
    from selfexplain.vectors import difference_of_means, read_prompt_lines, save_vector

    if args.pair:
        if args.negative:
            raise InputError("--negative only applies with --positive")
        positive_file, negative_file = (PROMPTS / name for name in PAIRS[args.pair])
    else:
        if not args.negative:
            raise InputError("--positive needs --negative (the contrasting prompts)")
        positive_file, negative_file = Path(args.positive), Path(args.negative)
    if not args.out.endswith(".safetensors"):
        raise InputError(f"--out {args.out}: write the vector to a .safetensors file")
    positive, negative = read_prompt_lines(positive_file), read_prompt_lines(negative_file)
    layer = args.layer if args.layer is not None else ExplainConfig.from_preset().injection_layer

    from selfexplain.models import load_model

    lm = load_model(args.model)
    if not 0 <= layer < lm.n_layers:
        raise InputError(f"--layer {layer} is out of range: the model has blocks 0..{lm.n_layers - 1}")
    vector, stats = difference_of_means(lm, positive, negative, layer, chat=not args.raw)
    metadata = {"kind": "difference-of-means", "model_id": lm.model_id, "revision": lm.revision,
                "layer": layer, "positive": str(positive_file), "negative": str(negative_file),
                "n_positive": len(positive), "n_negative": len(negative),
                "chat_template": not args.raw, "pair": args.pair or "",
                **{k: round(v, 4) for k, v in stats.items()}}
    path = save_vector(args.out, vector, metadata)
    print(json.dumps({"out": str(path), **metadata}))
    at = "" if layer == ExplainConfig.from_preset().injection_layer else f" --injection-layer {layer}"
    print(f"explain it: selfexplain explain --model {args.model} --vector {path}{at}")
    return 0
