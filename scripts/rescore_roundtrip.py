"""Add round-trip scores to a planted run saved before the round trip existed, and re-score its
samples under every selection strategy (the samples themselves are unchanged: sampling is seeded
per (feature, prompt, scale, sample) and the round trip only reads them).

    python scripts/rescore_roundtrip.py runs/eval_test50/runs/planted_faithful_test.json
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import polars as pl
import torch

from selfexplain.evaluation.planted import load_results, summarise_planted
from selfexplain.evaluation.wordlists import concept_directions
from selfexplain.explain import NORM_TEXTS
from selfexplain.models import load_model
from selfexplain.roundtrip import RoundTrip
from selfexplain.selection import STRATEGIES


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = load_results(args.run)
    lm = load_model("default")
    directions = concept_directions(lm, run.concepts, run.config.injection_layer)
    trip = RoundTrip(lm, run.config.injection_layer, list(NORM_TEXTS))
    results = []
    for fe, direction in zip(run.results, directions):
        scores = trip.scores([c.text for c in fe.candidates],
                             direction.expand(len(fe.candidates), -1))
        candidates = [replace(c, extra={**c.extra, "roundtrip": s})
                      for c, s in zip(fe.candidates, scores)]
        results.append(replace(fe, candidates=candidates))
    run = replace(run, results=results)
    rows = pl.concat([run.frame(), run.strategies(list(STRATEGIES))])
    summary = summarise_planted(rows)
    metrics = ("hit_top1", "hit_top3", "hit_any", "recovered_exact")
    for row in summary.filter(pl.col("metric").is_in(metrics)).iter_rows(named=True):
        print(f"{row['suite']:14} {row['method']:22} {row['metric']:16} {row['value']:.3f} "
              f"n={row['n']} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]")


if __name__ == "__main__":
    main()
