"""Less work per latent at equal quality? `python scripts/throughput_study.py --split dev`

Scores the default preset and variants of it (config overrides, JSON) in one run, on the same
model, precision and items:
- planted words of the split: the word in the top 3 (hit_top3), in any sample (hit_any);
- single-token latents of the default SAE (DEV: ids % 4 == 2, TEST: odd ids) by typical input and
  by decoder row: recovered token == the latent's top token, Wilson 95% interval;
- work: GFLOP per latent and per planted word (bench.flops.FlopCounter: the blocks really run),
  seconds per latent.
Writes one JSON line per variant to --out. Tune on dev; run test once.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.flops import FlopCounter
from selfexplain.adapter_training import latent_split_features
from selfexplain.config import ExplainConfig
from selfexplain.evaluation.matching import same_token
from selfexplain.evaluation.planted import run_planted, score_planted
from selfexplain.evaluation.real import feature_stats_for
from selfexplain.evaluation.stats import wilson
from selfexplain.evaluation.wordlists import load_words
from selfexplain.explain import SelfExplainer, explain_sae_features
from selfexplain.models import load_model
from selfexplain.statstore import load_sae


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", default="dev", choices=["dev", "test"])
    parser.add_argument("--planted", type=int, default=60)
    parser.add_argument("--real", type=int, default=40)
    parser.add_argument("--variants", default='{"today": {}}',
                        help="JSON object: name -> ExplainConfig overrides of the default preset")
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="docs/evaluation/throughput/study.jsonl")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.precision == "float32" else torch.bfloat16
    lm = load_model("default", dtype=dtype)
    sae, stats = load_sae("default"), feature_stats_for("default")
    top = dict(zip(stats["feature"].to_list(), stats["top_tokens"].to_list()))
    latents = latent_split_features(stats, args.split, limit=args.real)
    concepts = load_words(args.split, args.planted)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, overrides in json.loads(args.variants).items():
        config = ExplainConfig.from_preset("default", precision=args.precision, **overrides)
        explainer = SelfExplainer(lm, config)
        record: dict = {"variant": name, "overrides": overrides, "split": args.split,
                        "precision": args.precision}
        with FlopCounter(lm.model) as counter:
            run = run_planted(lm, config, concepts, explainer=explainer)
        rows = score_planted(run.results, concepts)
        record["planted"] = {"n": rows.height, "hit_top3": float(rows["hit_top3"].mean()),
                             "hit_any": float(rows["hit_any"].mean()),
                             "gflop_per_item": counter.flops / 1e9 / rows.height,
                             "seconds_per_item": run.seconds / rows.height}
        for direction in ("input", "decoder"):
            cfg = config.model_copy(update={"direction": direction})
            began = time.perf_counter()
            with FlopCounter(lm.model) as counter:
                results, _ = explain_sae_features(lm, sae, latents, cfg, explainer=explainer)
            seconds = time.perf_counter() - began
            hits = sum(fe.recovered_token is not None
                       and same_token(fe.recovered_token, top[fe.feature][0]) for fe in results)
            low, high = wilson(hits, len(results))
            record[direction] = {"n": len(results), "recovered": hits / len(results),
                                 "interval": [round(low, 3), round(high, 3)],
                                 "flagged": sum(fe.failed for fe in results) / len(results),
                                 "gflop_per_item": counter.flops / 1e9 / len(results),
                                 "tokens_per_item": counter.tokens / len(results),
                                 "seconds_per_item": seconds / len(results)}
        print(json.dumps(record), flush=True)
        with out.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
