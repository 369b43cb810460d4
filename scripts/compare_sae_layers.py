"""Train one SAE per candidate layer on the same text and compare them (chooses the default's layer).

`python scripts/compare_sae_layers.py --layers 2,3,5 --tokens 500000 --out runs/layers`
Activations for every layer come from one forward pass (stopped after the deepest layer). Writes
OUT/L<n>/ (a sae-lens folder with feature_stats.parquet) and OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from selfexplain.corpus import token_chunks
from selfexplain.models import load_model
from selfexplain.feature_stats import stats_from_activations, write_feature_stats
from selfexplain.sae_trainer import TrainSaeConfig, evaluate
from selfexplain.train_sae import collect_activations, fit_and_write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="2,3,5")
    parser.add_argument("--tokens", type=int, default=500_000)
    parser.add_argument("--heldout-tokens", type=int, default=100_000)
    parser.add_argument("--corpus", type=Path, default=Path("corpus"))
    parser.add_argument("--out", type=Path, default=Path("runs/layers"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-tokens", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--reuse", action="store_true",
                        help="keep activations in OUT/activations.pt and reuse them next time")
    args = parser.parse_args(argv)
    layers = [int(x) for x in args.layers.split(",")]
    lm = load_model("default")
    base = TrainSaeConfig.build(layer=layers[0], tokens=args.tokens,
                                heldout_tokens=args.heldout_tokens, seed=args.seed,
                                batch_tokens=args.batch_tokens, epochs=args.epochs, lr=args.lr)
    per_window = base.context - 1
    split = token_chunks(args.corpus, lm.tokenizer, context=base.context,
                         train_windows=math.ceil(args.tokens / per_window),
                         heldout_windows=math.ceil(args.heldout_tokens / per_window), seed=args.seed)
    t0 = time.perf_counter()
    cache = args.out / "activations.pt"
    stored = torch.load(cache) if args.reuse and cache.is_file() else None
    if stored is not None and set(layers) <= set(stored["train"]) and \
            stored["windows"] == (len(split.train), len(split.heldout)):
        train, heldout = stored["train"], stored["heldout"]
        print(f"reusing activations from {cache}", flush=True)
    else:
        train = collect_activations(lm, split.train, layers, desc="collect train",
                                    dtype=base.collect_dtype)
        heldout = collect_activations(lm, split.heldout, layers, desc="collect held-out")
        if args.reuse:
            args.out.mkdir(parents=True, exist_ok=True)
            torch.save({"train": train, "heldout": heldout,
                        "windows": (len(split.train), len(split.heldout))}, cache)
    collect_seconds = time.perf_counter() - t0
    print(f"collected {len(split.train)} + {len(split.heldout)} windows for layers {layers} "
          f"in {collect_seconds:.0f} s", flush=True)
    from sae_lens import SAE

    summary = {"collect_seconds": round(collect_seconds, 1), "sources": split.sources, "layers": {}}
    for layer in layers:
        config = base.model_copy(update={"layer": layer})
        out = args.out / f"L{layer}"
        trained = fit_and_write(lm, train[layer][: args.tokens], heldout[layer], split.heldout,
                                config, out, collect_seconds=collect_seconds, overwrite=True,
                                sources=split.sources)
        t1 = time.perf_counter()
        stats = stats_from_activations(lm, SAE.load_from_disk(str(out)), split.heldout,
                                       heldout[layer])
        write_feature_stats(stats, out)
        alive = stats.filter(stats["density"] > 0)
        norms = heldout[layer].float().norm(dim=-1)
        ordinary = norms <= 4 * norms.median()  # leave out massive-activation tokens
        ve_ordinary, _, _ = evaluate(trained.sae, heldout[layer][ordinary])
        row = {
            **trained.report._asdict(),
            "stats_seconds": round(time.perf_counter() - t1, 1),
            "single_token_fraction_of_alive": round(float(alive["single_token"].mean()), 4),
            "mean_top_token_share_of_alive": round(float(alive["top_token_share"].mean()), 4),
            "median_density_of_alive": float(alive["density"].median()),
            "resid_norm_median": round(float(norms.median()), 2),
            "resid_norm_p99": round(float(norms.quantile(0.99)), 2),
            "tokens_norm_over_300": round(float((norms > 300).float().mean()), 5),
            "massive_token_fraction": round(float((~ordinary).float().mean()), 5),
            "variance_explained_ordinary_tokens": round(ve_ordinary, 4),
        }
        summary["layers"][layer] = row
        print(json.dumps(row), flush=True)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    sys.exit(main())
