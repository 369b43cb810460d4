"""Decoder row or typical input? `python scripts/direction_study.py SAE_FOLDER --split dev`.

For a seeded sample of live features of the split (DEV = even ids), explain each feature twice
with the default preset: once injecting its unit decoder row (the method as published), once its
typical input (the activation-weighted mean of the mean-free held-out residuals where it fires,
`selfexplain.feature_stats.typical_inputs`). Prints token recovery, label-names-token and embedding AUROC
for both, with 95% intervals, plus the cosine between the two directions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import polars as pl
import torch

from selfexplain.config import ExplainConfig
from selfexplain.evaluation import real
from selfexplain.evaluation.suite import sample_features
from selfexplain.explain import SelfExplainer
from selfexplain.models import load_model
from selfexplain.statstore import load_sae
from selfexplain.feature_stats import load_feature_stats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sae_dir", type=Path)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    lm = load_model("default")
    sae = load_sae(str(args.sae_dir))
    if sae.inputs is None:
        raise SystemExit(f"{args.sae_dir} has no typical inputs")
    stats = load_feature_stats(args.sae_dir)
    features = sample_features(stats, args.limit, 0, args.split)
    index = torch.tensor(features)
    embedder = real.Embedder()
    config = ExplainConfig.from_preset("default")
    frames = []
    dec = sae.decoder[index].float()
    dec = dec / dec.norm(dim=-1, keepdim=True)
    inp = sae.inputs[index].float()
    inp = inp / inp.norm(dim=-1, keepdim=True)
    cos = (dec * inp).sum(-1)
    print(json.dumps({"features": len(features), "cos_decoder_input_median": float(cos.median())}))
    for name, directions in (("decoder", dec), ("input", inp)):
        results = SelfExplainer(lm, config).explain(directions, features)
        rows = real.score_real(name, stats=stats, embedder=embedder, **real.selfexplain_inputs(results))
        frames.append(rows)
        summary = real.summarise_real(rows, split=args.split)
        print(summary.filter(pl.col("metric").is_in(["recovered_exact", "label_names_token", "auroc"]))
              .select("method", "metric", "n", "value", "ci_low", "ci_high"))
    if args.out:
        pl.concat(frames).write_parquet(args.out)


if __name__ == "__main__":
    main()
