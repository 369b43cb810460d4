"""How to read the literal token off the samples? `python scripts/recovery_study.py --split dev`.

Explains the single-token features of a seeded sample of the default SAE (the same sample as
`evaluate --suite real`) with the default preset, on typical inputs and on decoder rows, and
scores token-recovery rules on the same samples (no re-sampling):
- answer: the repeat prompt's most frequent answer, ties to the better rank (the engine until
  issue 13's last change; the post takes the top-ranked answer);
- peak (repeat): the token where the round trip peaks, over the repeat prompt's answers;
- peak: the same over the answers of both prompts (the default preset's rule now);
- any answer: an upper bound, some repeat answer is the token.
"""

from __future__ import annotations

import argparse
import json

import polars as pl
import torch

from selfexplain.config import ExplainConfig
from selfexplain.evaluation.matching import same_token
from selfexplain.evaluation.real import feature_stats_for
from selfexplain.evaluation.stats import wilson
from selfexplain.evaluation.suite import sample_features
from selfexplain.explain import best_reading_answer, explain_sae_features, recover_token
from selfexplain.models import load_model
from selfexplain.prompts import REPEAT
from selfexplain.statstore import load_sae


def rules(fe) -> dict[str, str | None]:
    repeat = sorted((c for c in fe.candidates if c.prompt == REPEAT), key=lambda c: c.rank)
    best_repeat, best = best_reading_answer(repeat), best_reading_answer(fe.candidates)
    return {"answer": recover_token(repeat, majority=True),
            "peak (repeat)": best_repeat.peak_token if best_repeat else None,
            "peak": best.peak_token if best else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", default="dev", choices=["dev", "test"])
    parser.add_argument("--limit", type=int, default=200, help="features sampled (half single-token)")
    parser.add_argument("--precision", default="bfloat16", choices=["bfloat16", "float32"])
    args = parser.parse_args()
    lm = load_model("default", dtype=getattr(torch, args.precision))
    sae, stats = load_sae("default"), feature_stats_for("default")
    top = dict(zip(stats["feature"].to_list(), stats["top_tokens"].to_list()))
    single = set(stats.filter(pl.col("single_token"))["feature"].to_list())
    features = [f for f in sample_features(stats, args.limit, 0, args.split) if f in single]
    for direction in ("input", "decoder"):
        config = ExplainConfig.from_preset("default", direction=direction, precision=args.precision)
        results, _ = explain_sae_features(lm, sae, features, config)
        hits: dict[str, int] = {}
        for fe in results:
            truth = top[fe.feature][0]
            for rule, token in rules(fe).items():
                hits[rule] = hits.get(rule, 0) + (token is not None and same_token(token, truth))
            hits["any answer"] = hits.get("any answer", 0) + any(
                same_token(c.text, truth) for c in fe.candidates if c.prompt == REPEAT)
        n = len(results)
        print(json.dumps({"split": args.split, "direction": direction, "n": n, **{
            rule: [k, *(round(x, 2) for x in wilson(k, n))] for rule, k in hits.items()}}))


if __name__ == "__main__":
    main()
