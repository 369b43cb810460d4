"""A bare copy of the default SAE after `selfexplain collect` vs the shipped SAE (issue 25).

`python scripts/bare_sae_study.py BARE_DIR --limit 200 --out docs/evaluation/bare_collect`

BARE_DIR holds only cfg.json and sae_weights.safetensors of the default SAE, with its statistics
collected (`selfexplain collect --sae BARE_DIR`, default corpus). On the same TEST latents (odd
ids, the real suite's seeded sample), the default preset explains three directions per latent:
the shipped typical inputs, the collected ones, and the decoder rows (what a bare SAE got before
collect). Each is scored against both ground truths: the shipped statistics (held-out documents)
and the collected ones (training documents of the embedded sample).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import polars as pl
import torch

from selfexplain.config import ExplainConfig
from selfexplain.evaluation import real
from selfexplain.evaluation.suite import sample_features
from selfexplain.explain import SelfExplainer, explain_sae_features
from selfexplain.models import load_model
from selfexplain.statstore import load_sae
from selfexplain.statstore import require_stats_frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bare", type=Path)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    shipped = load_sae("default")
    bare = load_sae(str(args.bare))
    if bare.inputs is None:
        raise SystemExit(f"{args.bare} has no collected statistics: run selfexplain collect first")
    truths = {"shipped_stats": require_stats_frame(shipped, Path(shipped.stats_dir)),
              "collected_stats": require_stats_frame(bare)}
    features = sample_features(truths["shipped_stats"], args.limit, args.seed, "test")
    config = ExplainConfig.from_preset("default", precision="bfloat16")
    lm = load_model("default", dtype=config.torch_dtype)
    explainer = SelfExplainer(lm, config)
    embedder = real.Embedder()
    variants = {
        "shipped_inputs": (shipped, "input"),
        "collected_inputs": (bare, "input"),
        "decoder_rows": (replace(bare, inputs=None), "decoder"),
    }
    frames = []
    for name, (sae, direction) in variants.items():
        print(f"explaining {len(features)} TEST features with {name}", flush=True)
        results, _ = explain_sae_features(lm, sae, features, replace_direction(config, direction),
                                          explainer=explainer)
        inputs = real.selfexplain_inputs(results)
        for truth, stats in truths.items():
            rows = real.score_real(name, stats=stats, embedder=embedder, seed=args.seed, **inputs)
            frames.append(rows.with_columns(pl.lit(truth).alias("truth")))
    items = pl.concat(frames)
    summary = []
    for (method, truth), group in items.group_by(["method", "truth"], maintain_order=True):
        table = real.summarise_real(group.drop("truth"), split="real-test")
        summary.append(table.with_columns(pl.lit(truth).alias("truth")))
    summary = pl.concat(summary)
    with pl.Config(tbl_rows=200, tbl_cols=20, fmt_str_lengths=40):
        print(summary)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        items.write_parquet(args.out / "items.parquet")
        summary.write_csv(args.out / "summary.csv")
        (args.out / "settings.json").write_text(json.dumps({
            "features": features, "config": json.loads(config.model_dump_json()),
            "bare_stats": bare.stats_dir}, indent=2) + "\n")
    return 0


def replace_direction(config: ExplainConfig, direction: str) -> ExplainConfig:
    return config.model_copy(update={"direction": direction})


if __name__ == "__main__":
    raise SystemExit(main())
